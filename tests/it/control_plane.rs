//! The local control plane is a real kube-apiserver: CRDs are served, custom objects round-trip
//! through etcd, and RBAC refuses what a user was not granted.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;
use support::Plane;

/// The control plane of the suites that run no operator.
const PLANE: Plane = Plane::Default;

fn widget_crd() -> CustomResourceDefinition {
    let schema: JSONSchemaProps = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1}}
            }
        }
    }))
    .expect("valid schema");
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some("widgets.testenv.adc.dev".into()),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: "testenv.adc.dev".into(),
            names: CustomResourceDefinitionNames {
                kind: "Widget".into(),
                plural: "widgets".into(),
                singular: Some("widget".into()),
                ..Default::default()
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: "v1".into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

#[tokio::test]
async fn crd_is_served_and_custom_objects_round_trip() {
    let client = PLANE.admin_client().await;
    let namespace = support::test_namespace(&client, "crd").await;

    let namespaces = Api::<Namespace>::all(client.clone());
    let read_ns = namespaces
        .get(&namespace)
        .await
        .expect("reading the namespace back");
    assert_eq!(read_ns.metadata.name.as_deref(), Some(namespace.as_str()));

    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    match crds.create(&PostParams::default(), &widget_crd()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => panic!("creating the CRD: {err}"),
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds.clone(),
            "widgets.testenv.adc.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established within 30s")
    .expect("watching the CRD");

    let read_crd = crds
        .get("widgets.testenv.adc.dev")
        .await
        .expect("reading the CRD back");
    assert_eq!(read_crd.spec.group, "testenv.adc.dev");
    assert_eq!(read_crd.spec.names.kind, "Widget");

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("testenv.adc.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
    let mut widget = DynamicObject::new("w1", &resource).within(&namespace);
    widget.data = json!({"spec": {"size": 3}});
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("creating a Widget");
    let read_widget = widgets.get("w1").await.expect("reading the Widget back");
    assert_eq!(read_widget.data["spec"]["size"], json!(3));

    // The CRD's schema is enforced by the API server itself.
    let mut bad = DynamicObject::new("w2", &resource).within(&namespace);
    bad.data = json!({"spec": {"size": 0}});
    let err = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("size 0 violates minimum 1");
    assert!(
        err.to_string().contains("spec.size"),
        "error names the field: {err}"
    );
}

#[tokio::test]
async fn rbac_refuses_a_user_without_grants() {
    let admin = PLANE.admin_client().await;
    let namespace = support::test_namespace(&admin, "rbac").await;

    let plane = PLANE.get();
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    config.auth_info.impersonate = Some("nobody@example.com".into());
    let nobody = Client::try_from(config).expect("client");

    let err = Api::<ConfigMap>::namespaced(nobody, &namespace)
        .list(&Default::default())
        .await
        .expect_err("an ungranted user is refused");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected a 403, got {other}"),
    }
}
