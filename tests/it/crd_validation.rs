//! The generated CRDs (crds/*.yaml) on a real kube-apiserver: valid objects are accepted and
//! defaulted, bad input is refused by the schema and its CEL rules with a message that names the
//! field, unknown fields are refused or pruned, and every property is documented.

use crate::support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use adc_operator::api::{
    AllocationType, GcpCloud, HaMode, Protocol, VirtualService, VpcRoute, conditions,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_crd_established};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use support::Plane;

/// The control plane of the suites that run no operator.
const PLANE: Plane = Plane::Default;

const FIELD_MANAGER: &str = "adc-operator-test";

/// Applies the checked-in CRDs (server-side apply, forced) and waits until each is Established.
async fn install_crds(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for file in [
        "gcpclouds.adc.dev.yaml",
        "virtualservices.adc.dev.yaml",
        "vpcroutes.adc.dev.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("reading a CRD file");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parsing a CRD");
        let name = crd.metadata.name.clone().expect("CRD name");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // Test binaries' tests apply concurrently; retry a conflict once or twice.
        let mut attempt = 0;
        loop {
            match crds.patch(&name, &params, &Patch::Apply(&crd)).await {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 409 && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("applying {name}: {err}"),
            }
        }
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), &name, is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} established within 60s"))
        .expect("watching the CRD");
    }
}

async fn setup() -> Client {
    let client = PLANE.admin_client().await;
    install_crds(&client).await;
    client
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Sets the value at a JSON pointer, creating nothing: the parent must exist.
fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = value
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} exists"));
    match parent {
        Value::Object(map) => {
            map.insert(key.to_string(), new);
        }
        Value::Array(items) => items[key.parse::<usize>().expect("an index")] = new,
        other => panic!("{pointer}: parent is {other}"),
    }
}

fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{parent} is an object"))
        .remove(key);
}

/// One kind's objects, untyped (so invalid input can be sent).
struct Kind {
    api: Api<DynamicObject>,
    resource: ApiResource,
    namespace: Option<String>,
}

impl Kind {
    fn new<K: Resource<DynamicType = ()>>(client: &Client, namespace: Option<&str>) -> Self {
        let resource = ApiResource::erase::<K>(&());
        let api = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        Self {
            api,
            resource,
            namespace: namespace.map(str::to_string),
        }
    }

    fn object(&self, name: &str, spec: Value) -> DynamicObject {
        let mut object = DynamicObject::new(name, &self.resource);
        object.metadata.namespace = self.namespace.clone();
        object.data = json!({ "spec": spec });
        object
    }

    async fn create(&self, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
        self.api
            .create(&PostParams::default(), &self.object(name, spec))
            .await
    }

    async fn accept(&self, case: &str, spec: Value) -> DynamicObject {
        let name = unique(case);
        self.create(&name, spec)
            .await
            .unwrap_or_else(|err| panic!("{} {case} should be accepted: {err}", self.resource.kind))
    }

    /// Creates the object, expects a 422 and returns the API server's message, which must
    /// contain every one of `needles`.
    async fn reject(&self, case: &str, spec: Value, needles: &[&str]) {
        let name = unique(case);
        let message = match self.create(&name, spec).await {
            Ok(_) => panic!("{} {case} should be refused", self.resource.kind),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{case}: {status:?}");
                status.message
            }
            Err(other) => panic!("{case}: expected a 422, got {other}"),
        };
        for needle in needles {
            assert!(
                message.contains(needle),
                "{} {case}: the message should contain {needle:?}: {message}",
                self.resource.kind
            );
        }
    }
}

// ----- examples (design/API.md, adapted) -----

fn cloud_spec() -> Value {
    json!({
        "project": "acme-prod",
        "network": "prod-vpc",
        "region": "us-central1",
        "credentials": {"workloadIdentity": {}},
        "endpoint": "https://compute.googleapis.com",
        "resourcePrefix": "adc-",
        "allowedNamespaces": {"matchLabels": {"adc.dev/tenant": "true"}},
        "allowedDestinationRanges": ["10.0.0.0/8"],
        "rateLimit": {"writesPerMinute": 1200, "readsPerMinute": 1200, "operationReadsPerMinute": 2400},
        "batching": {"maxCallsPerBatch": 500, "linger": "50ms", "maxBatchesInFlight": 4},
        "resyncInterval": "5m",
        "instancePollInterval": "5s",
    })
}

fn virtual_service_spec() -> Value {
    json!({
        "cloudRef": "prod-vpc",
        "vip": {"address": "10.10.0.5"},
        "ports": [{"port": 443, "protocol": "TCP"}],
        "sourceRanges": ["10.0.0.0/8"],
        "serviceEngines": [
            {"name": "se-1", "zone": "us-central1-a"},
            {"name": "se-2", "zone": "us-central1-b"},
        ],
        "mode": "ActiveActive",
        "routePriority": 2000,
    })
}

fn vpc_route_spec() -> Value {
    json!({
        "cloudRef": "prod-vpc",
        "destRange": "192.168.0.0/16",
        "priority": 1000,
        "tags": ["se"],
        "nextHop": {"ip": "10.0.0.9"},
    })
}

fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    set(&mut spec, pointer, value);
    spec
}

fn without(mut spec: Value, pointer: &str) -> Value {
    remove(&mut spec, pointer);
    spec
}

#[tokio::test]
async fn valid_examples_are_accepted() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-valid").await;

    let clouds = Kind::new::<GcpCloud>(&client, None);
    let cloud = clouds.accept("design-example", cloud_spec()).await;
    // The stored object reads back as the typed resource.
    let typed: GcpCloud = Api::<GcpCloud>::all(client.clone())
        .get(&cloud.metadata.name.unwrap())
        .await
        .expect("reading the GcpCloud back typed");
    assert_eq!(typed.spec.rate_limit.operation_reads_per_minute, 2400);
    assert!(typed.spec.credentials.workload_identity.is_some());
    clouds
        .accept(
            "secret-key",
            with(
                cloud_spec(),
                "/credentials",
                json!({"secretRef": {"namespace": "adc-system", "name": "gcp-sa", "key": "key.json"}}),
            ),
        )
        .await;
    clouds
        .accept(
            "default-route",
            with(
                with(
                    cloud_spec(),
                    "/allowedDestinationRanges",
                    json!(["0.0.0.0/0", "::/0"]),
                ),
                "/allowDefaultRoute",
                json!(true),
            ),
        )
        .await;
    clouds
        .accept(
            "emulator",
            with(cloud_spec(), "/endpoint", json!("http://127.0.0.1:8085")),
        )
        .await;
    clouds
        .accept(
            "everything-allowed",
            with(
                without(cloud_spec(), "/allowedDestinationRanges"),
                "/allowedNamespaces",
                json!({}),
            ),
        )
        .await;

    let services = Kind::new::<VirtualService>(&client, Some(&namespace));
    let vs = services
        .accept("design-example", virtual_service_spec())
        .await;
    let typed: VirtualService = Api::<VirtualService>::namespaced(client.clone(), &namespace)
        .get(&vs.metadata.name.unwrap())
        .await
        .expect("reading the VirtualService back typed");
    assert_eq!(typed.spec.vip.address.as_deref(), Some("10.10.0.5"));
    assert_eq!(typed.spec.service_engines.len(), 2);
    let allocated = services
        .accept(
            "allocate",
            with(
                with(
                    virtual_service_spec(),
                    "/vip",
                    json!({"allocate": {"type": "Internal", "subnetwork": "se-subnet"}}),
                ),
                "/mode",
                json!("ActiveStandby"),
            ),
        )
        .await;
    let typed: VirtualService = Api::<VirtualService>::namespaced(client.clone(), &namespace)
        .get(&allocated.metadata.name.unwrap())
        .await
        .unwrap();
    assert_eq!(typed.spec.mode, HaMode::ActiveStandby);
    assert_eq!(
        typed.spec.vip.allocate.and_then(|a| a.r#type),
        Some(AllocationType::Internal)
    );
    services
        .accept(
            "external",
            with(
                virtual_service_spec(),
                "/vip",
                json!({"allocate": {"type": "External"}}),
            ),
        )
        .await;
    services
        .accept(
            "standby-below-65535",
            with(
                with(virtual_service_spec(), "/mode", json!("ActiveStandby")),
                "/routePriority",
                json!(65534),
            ),
        )
        .await;
    services
        .accept(
            "active-active-65535",
            with(virtual_service_spec(), "/routePriority", json!(65535)),
        )
        .await;
    services
        .accept(
            "open-to-the-world",
            with(
                virtual_service_spec(),
                "/sourceRanges",
                json!(["0.0.0.0/0", "192.168.0.0/16", "203.0.113.7/32"]),
            ),
        )
        .await;
    services
        .accept(
            "same-port-two-protocols",
            with(
                virtual_service_spec(),
                "/ports",
                json!([{"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}, {"port": 443}]),
            ),
        )
        .await;

    let routes = Kind::new::<VpcRoute>(&client, Some(&namespace));
    routes.accept("design-example", vpc_route_spec()).await;
    for (case, hop) in [
        (
            "instance",
            json!({"instance": {"name": "gw-1", "zone": "us-central1-a"}}),
        ),
        ("gateway", json!({"gateway": "default-internet-gateway"})),
        (
            "ilb",
            json!({"ilb": "projects/acme-prod/regions/us-central1/forwardingRules/ilb-1"}),
        ),
        ("ilb-name", json!({"ilb": "ilb-1"})),
        (
            "ilb-regional-path",
            json!({"ilb": "regions/us-central1/forwardingRules/ilb-1"}),
        ),
        (
            "ilb-url",
            json!({"ilb": "https://www.googleapis.com/compute/v1/projects/acme-prod/regions/us-central1/forwardingRules/ilb-1"}),
        ),
        ("ilb-ip", json!({"ilb": "10.128.0.40"})),
    ] {
        routes
            .accept(case, with(vpc_route_spec(), "/nextHop", hop))
            .await;
    }
    routes
        .accept(
            "ipv6-untagged",
            without(
                with(vpc_route_spec(), "/destRange", json!("fd00::/8")),
                "/tags",
            ),
        )
        .await;
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-defaults").await;

    let clouds = Kind::new::<GcpCloud>(&client, None);
    let minimal_cloud = json!({
        "project": "acme-prod",
        "network": "prod-vpc",
        "region": "us-central1",
        "credentials": {"secretRef": {"namespace": "adc-system", "name": "gcp-sa"}},
    });
    let cloud = clouds.accept("minimal", minimal_cloud).await;
    let spec = &cloud.data["spec"];
    assert_eq!(spec["resourcePrefix"], json!("adc-"), "{spec}");
    assert_eq!(
        spec["rateLimit"],
        json!({"readsPerMinute": 1500, "writesPerMinute": 1500, "operationReadsPerMinute": 1500,
            "urgentReserve": "25%"})
    );
    assert_eq!(
        spec["batching"],
        json!({"maxCallsPerBatch": 500, "linger": "50ms", "maxBatchesInFlight": 4})
    );
    assert_eq!(spec["resyncInterval"], json!("5m"));
    assert_eq!(spec["instancePollInterval"], json!("5s"));
    assert_eq!(spec["allowDefaultRoute"], json!(false));
    assert_eq!(spec["credentials"]["secretRef"]["key"], json!("key.json"));
    assert!(spec.get("endpoint").is_none(), "{spec}");
    // Partly given nested defaults are completed field by field.
    let partial = clouds
        .accept(
            "partial-rate-limit",
            with(cloud_spec(), "/rateLimit", json!({"writesPerMinute": 600})),
        )
        .await;
    assert_eq!(
        partial.data["spec"]["rateLimit"],
        json!({"readsPerMinute": 1500, "writesPerMinute": 600, "operationReadsPerMinute": 1500,
            "urgentReserve": "25%"})
    );
    // The urgent reserve is a percentage or a number of calls.
    for (case, reserve) in [
        ("reserve-share", json!("25%")),
        ("reserve-calls", json!(200)),
    ] {
        let cloud = clouds
            .accept(
                case,
                with(
                    cloud_spec(),
                    "/rateLimit",
                    json!({"urgentReserve": reserve}),
                ),
            )
            .await;
        assert_eq!(cloud.data["spec"]["rateLimit"]["urgentReserve"], reserve);
    }

    let services = Kind::new::<VirtualService>(&client, Some(&namespace));
    let minimal_vs = without(
        without(
            with(virtual_service_spec(), "/ports", json!([{"port": 443}])),
            "/mode",
        ),
        "/routePriority",
    );
    let vs = services.accept("minimal", minimal_vs).await;
    let typed: VirtualService = Api::<VirtualService>::namespaced(client.clone(), &namespace)
        .get(&vs.metadata.name.unwrap())
        .await
        .unwrap();
    assert_eq!(typed.spec.mode, HaMode::ActiveActive);
    assert_eq!(typed.spec.route_priority, 2000);
    assert_eq!(typed.spec.ports[0].protocol, Protocol::Tcp);

    let routes = Kind::new::<VpcRoute>(&client, Some(&namespace));
    let route = routes
        .accept(
            "minimal",
            without(without(vpc_route_spec(), "/priority"), "/tags"),
        )
        .await;
    assert_eq!(route.data["spec"]["priority"], json!(1000));
    let typed: VpcRoute = Api::<VpcRoute>::namespaced(client.clone(), &namespace)
        .get(&route.metadata.name.unwrap())
        .await
        .unwrap();
    assert_eq!(typed.spec.priority, 1000);
    assert!(typed.spec.tags.is_empty());
}

#[tokio::test]
async fn virtual_service_rejections() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-vs").await;
    let services = Kind::new::<VirtualService>(&client, Some(&namespace));
    let base = virtual_service_spec;
    let one_vip = "vip needs exactly one of address or allocate";
    let ipv4 = "vip.address must be an IPv4 address";

    services
        .reject(
            "vip-both",
            with(
                base(),
                "/vip",
                json!({"address": "10.10.0.5", "allocate": {"type": "Internal"}}),
            ),
            &["spec.vip", one_vip],
        )
        .await;
    let one_allocation = "vip.allocate needs exactly one of type or pool";
    services
        .reject(
            "allocate-both",
            with(
                base(),
                "/vip",
                json!({"allocate": {"type": "Internal", "pool": "vips"}}),
            ),
            &["spec.vip.allocate", one_allocation],
        )
        .await;
    services
        .reject(
            "allocate-neither",
            with(base(), "/vip", json!({"allocate": {}})),
            &["spec.vip.allocate", one_allocation],
        )
        .await;
    services
        .reject(
            "pool-subnetwork",
            with(
                base(),
                "/vip",
                json!({"allocate": {"pool": "vips", "subnetwork": "default"}}),
            ),
            &[
                "spec.vip.allocate",
                "subnetwork applies only to Internal addresses",
            ],
        )
        .await;
    services
        .accept(
            "allocate-pool",
            with(base(), "/vip", json!({"allocate": {"pool": "vips"}})),
        )
        .await;
    services
        .reject(
            "vip-neither",
            with(base(), "/vip", json!({})),
            &["spec.vip", one_vip],
        )
        .await;
    services
        .reject(
            "vip-bad-ip",
            with(base(), "/vip/address", json!("10.0.0.300")),
            &["spec.vip.address", ipv4],
        )
        .await;
    services
        .reject(
            "vip-ipv6",
            with(base(), "/vip/address", json!("fd00::5")),
            &["spec.vip.address", ipv4],
        )
        .await;
    services
        .reject(
            "vip-external-subnetwork",
            with(
                base(),
                "/vip",
                json!({"allocate": {"type": "External", "subnetwork": "se-subnet"}}),
            ),
            &[
                "spec.vip.allocate",
                "subnetwork applies only to Internal addresses",
            ],
        )
        .await;
    services
        .reject(
            "vip-allocate-type",
            with(base(), "/vip", json!({"allocate": {"type": "Somewhere"}})),
            &["spec.vip.allocate.type"],
        )
        .await;
    services
        .reject(
            "ports-empty",
            with(base(), "/ports", json!([])),
            &["spec.ports"],
        )
        .await;
    services
        .reject(
            "port-0",
            with(base(), "/ports/0/port", json!(0)),
            &["spec.ports[0].port"],
        )
        .await;
    services
        .reject(
            "port-70000",
            with(base(), "/ports/0/port", json!(70000)),
            &["spec.ports[0].port"],
        )
        .await;
    services
        .reject(
            "ports-repeat",
            with(
                base(),
                "/ports",
                json!([{"port": 443, "protocol": "TCP"}, {"port": 80}, {"port": 443}]),
            ),
            &["spec.ports", "ports must not repeat"],
        )
        .await;
    services
        .reject(
            "ports-17",
            with(
                base(),
                "/ports",
                Value::Array((1..=17).map(|port| json!({"port": port})).collect()),
            ),
            &["spec.ports"],
        )
        .await;
    services
        .reject(
            "protocol",
            with(base(), "/ports/0/protocol", json!("SCTP")),
            &["spec.ports[0].protocol"],
        )
        .await;
    services
        .reject(
            "source-range-33",
            with(base(), "/sourceRanges", json!(["10.0.0.0/33"])),
            &["spec.sourceRanges", "sourceRanges must be CIDR ranges"],
        )
        .await;
    let sources = "sourceRanges must be IPv4 CIDR ranges with no host bits set";
    for (case, ranges) in [
        ("source-range-host-bits", json!(["10.1.2.3/8"])),
        ("source-range-ipv6", json!(["10.0.0.0/8", "fd00::/8"])),
    ] {
        services
            .reject(
                case,
                with(base(), "/sourceRanges", ranges),
                &["spec.sourceRanges", sources],
            )
            .await;
    }
    for (case, address) in [
        ("vip-unspecified", "0.0.0.0"),
        ("vip-broadcast", "255.255.255.255"),
        ("vip-loopback", "127.0.0.1"),
        ("vip-multicast", "224.0.0.5"),
        ("vip-link-local", "169.254.1.1"),
    ] {
        services
            .reject(
                case,
                with(base(), "/vip/address", json!(address)),
                &["spec.vip.address", "vip.address must be a unicast address"],
            )
            .await;
    }
    services
        .reject(
            "standby-priority-65535",
            with(
                with(base(), "/mode", json!("ActiveStandby")),
                "/routePriority",
                json!(65535),
            ),
            &[
                "spec.routePriority",
                "routePriority must be below 65535 in ActiveStandby mode",
            ],
        )
        .await;
    services
        .reject(
            "engine-zone",
            with(base(), "/serviceEngines/0/zone", json!("us-céntral1-a")),
            &["spec.serviceEngines[0].zone"],
        )
        .await;
    services
        .reject(
            "subnetwork",
            with(
                base(),
                "/vip",
                json!({"allocate": {"type": "Internal", "subnetwork": "Se Subnet"}}),
            ),
            &["spec.vip.allocate.subnetwork"],
        )
        .await;
    services
        .reject(
            "source-ranges-empty",
            with(base(), "/sourceRanges", json!([])),
            &["spec.sourceRanges"],
        )
        .await;
    services
        .reject(
            "engines-empty",
            with(base(), "/serviceEngines", json!([])),
            &["spec.serviceEngines"],
        )
        .await;
    services
        .reject(
            "engines-repeat",
            with(
                base(),
                "/serviceEngines/1",
                json!({"name": "se-1", "zone": "us-central1-b"}),
            ),
            &[
                "spec.serviceEngines",
                "serviceEngines names must not repeat",
            ],
        )
        .await;
    services
        .reject(
            "engine-name",
            with(base(), "/serviceEngines/0/name", json!("SE_1")),
            &["spec.serviceEngines[0].name"],
        )
        .await;
    services
        .reject(
            "route-priority-70000",
            with(base(), "/routePriority", json!(70000)),
            &["spec.routePriority"],
        )
        .await;
    services
        .reject(
            "mode",
            with(base(), "/mode", json!("Random")),
            &["spec.mode"],
        )
        .await;
    services
        .reject(
            "no-cloud-ref",
            without(base(), "/cloudRef"),
            &["spec.cloudRef"],
        )
        .await;
}

#[tokio::test]
async fn vpc_route_rejections() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-route").await;
    let routes = Kind::new::<VpcRoute>(&client, Some(&namespace));
    let base = vpc_route_spec;
    let one_hop = "nextHop needs exactly one of ip, instance, gateway or ilb";

    routes
        .reject(
            "two-hops",
            with(
                base(),
                "/nextHop",
                json!({"ip": "10.0.0.9", "gateway": "default-internet-gateway"}),
            ),
            &["spec.nextHop", one_hop],
        )
        .await;
    routes
        .reject(
            "no-hop",
            with(base(), "/nextHop", json!({})),
            &["spec.nextHop", one_hop],
        )
        .await;
    routes
        .reject(
            "dest-nonsense",
            with(base(), "/destRange", json!("nonsense")),
            &["spec.destRange", "destRange must be a CIDR range"],
        )
        .await;
    routes
        .reject(
            "dest-bare-ip",
            with(base(), "/destRange", json!("10.0.0.1")),
            &["spec.destRange", "destRange must be a CIDR range"],
        )
        .await;
    routes
        .reject(
            "dest-host-bits",
            with(base(), "/destRange", json!("192.168.1.0/16")),
            &["spec.destRange", "destRange must have no host bits set"],
        )
        .await;
    routes
        .reject(
            "hop-ip-loopback",
            with(base(), "/nextHop/ip", json!("127.0.0.1")),
            &["spec.nextHop.ip", "nextHop.ip must be a unicast address"],
        )
        .await;
    for (case, ilb) in [
        ("ilb-words", "the internal load balancer"),
        ("ilb-unicode", "ïlb-1"),
        (
            "ilb-other-collection",
            "projects/acme-prod/global/routes/r-1",
        ),
        ("ilb-ipv6", "fd00::40"),
    ] {
        routes
            .reject(
                case,
                with(base(), "/nextHop", json!({"ilb": ilb})),
                &[
                    "spec.nextHop.ilb",
                    "nextHop.ilb must be a forwarding rule name",
                ],
            )
            .await;
    }
    routes
        .reject(
            "instance-zone-unicode",
            with(
                base(),
                "/nextHop",
                json!({"instance": {"name": "gw-1", "zone": "zöne-a"}}),
            ),
            &["spec.nextHop.instance.zone"],
        )
        .await;
    routes
        .reject(
            "priority-70000",
            with(base(), "/priority", json!(70000)),
            &["spec.priority"],
        )
        .await;
    routes
        .reject(
            "hop-ip",
            with(base(), "/nextHop/ip", json!("10.0.0.300")),
            &["spec.nextHop.ip", "nextHop.ip must be an IPv4 address"],
        )
        .await;
    routes
        .reject(
            "gateway",
            with(base(), "/nextHop", json!({"gateway": "my-gateway"})),
            &[
                "spec.nextHop.gateway",
                "nextHop.gateway must be default-internet-gateway",
            ],
        )
        .await;
    routes
        .reject(
            "tag",
            with(base(), "/tags", json!(["se", "Not_A_Tag"])),
            &["spec.tags[1]"],
        )
        .await;
    routes
        .reject(
            "instance-zone",
            with(base(), "/nextHop", json!({"instance": {"name": "gw-1"}})),
            &["spec.nextHop.instance.zone"],
        )
        .await;
}

#[tokio::test]
async fn gcp_cloud_rejections() {
    let client = setup().await;
    let clouds = Kind::new::<GcpCloud>(&client, None);
    let base = cloud_spec;
    let one_credential = "credentials needs exactly one of workloadIdentity or secretRef";
    let default_route = "0.0.0.0/0 (or ::/0) needs allowDefaultRoute: true";

    clouds
        .reject(
            "both-credentials",
            with(
                base(),
                "/credentials",
                json!({"workloadIdentity": {}, "secretRef": {"namespace": "adc-system", "name": "gcp-sa"}}),
            ),
            &["spec.credentials", one_credential],
        )
        .await;
    clouds
        .reject(
            "no-credentials",
            with(base(), "/credentials", json!({})),
            &["spec.credentials", one_credential],
        )
        .await;
    let reserve = "urgentReserve must be a percentage from 0% to 99% or a number of calls below writesPerMinute";
    for (case, value) in [
        ("reserve-all", json!("100%")),
        ("reserve-words", json!("a tenth")),
        ("reserve-negative", json!(-1)),
        ("reserve-window", json!(1500)),
    ] {
        clouds
            .reject(
                case,
                with(base(), "/rateLimit", json!({"urgentReserve": value})),
                &["spec.rateLimit.urgentReserve", reserve],
            )
            .await;
    }
    clouds
        .reject(
            "default-route",
            with(
                base(),
                "/allowedDestinationRanges",
                json!(["10.0.0.0/8", "0.0.0.0/0"]),
            ),
            &["spec.allowedDestinationRanges", default_route],
        )
        .await;
    clouds
        .reject(
            "default-route-v6",
            with(
                with(base(), "/allowedDestinationRanges", json!(["::/0"])),
                "/allowDefaultRoute",
                json!(false),
            ),
            &["spec.allowedDestinationRanges", default_route],
        )
        .await;
    clouds
        .reject(
            "destination-not-cidr",
            with(base(), "/allowedDestinationRanges", json!(["banana"])),
            &[
                "spec.allowedDestinationRanges",
                "allowedDestinationRanges must be CIDR ranges",
            ],
        )
        .await;
    for (case, project) in [
        ("project-case", "Acme-Prod"),
        ("project-short", "acme"),
        ("project-underscore", "acme_prod"),
        ("project-hyphen-end", "acme-prod-"),
    ] {
        clouds
            .reject(
                case,
                with(base(), "/project", json!(project)),
                &["spec.project", "project must be a GCP project id"],
            )
            .await;
    }
    clouds
        .reject(
            "region",
            with(base(), "/region", json!("US Central 1")),
            &["spec.region"],
        )
        .await;
    clouds
        .reject(
            "network",
            with(base(), "/network", json!("-prod")),
            &["spec.network", "network must be a GCP network name"],
        )
        .await;
    for (case, prefix) in [
        ("prefix-case", "ADC-"),
        ("prefix-digit", "1adc-"),
        ("prefix-empty", ""),
    ] {
        clouds
            .reject(
                case,
                with(base(), "/resourcePrefix", json!(prefix)),
                &[
                    "spec.resourcePrefix",
                    "resourcePrefix must be a lowercase letter",
                ],
            )
            .await;
    }
    clouds
        .reject(
            "prefix-long",
            with(base(), "/resourcePrefix", json!("a".repeat(21))),
            &["spec.resourcePrefix"],
        )
        .await;
    clouds
        .reject(
            "endpoint",
            with(base(), "/endpoint", json!("compute.googleapis.com")),
            &[
                "spec.endpoint",
                "endpoint must be an http:// or https:// URL",
            ],
        )
        .await;
    clouds
        .reject(
            "linger",
            with(base(), "/batching/linger", json!("50")),
            &["spec.batching.linger"],
        )
        .await;
    clouds
        .reject(
            "resync",
            with(base(), "/resyncInterval", json!("1d")),
            &["spec.resyncInterval"],
        )
        .await;
    clouds
        .reject(
            "instance-poll",
            with(base(), "/instancePollInterval", json!("5 s")),
            &["spec.instancePollInterval"],
        )
        .await;
    clouds
        .reject(
            "calls-per-batch",
            with(base(), "/batching/maxCallsPerBatch", json!(1001)),
            &["spec.batching.maxCallsPerBatch"],
        )
        .await;
    clouds
        .reject(
            "batches-in-flight",
            with(base(), "/batching/maxBatchesInFlight", json!(0)),
            &["spec.batching.maxBatchesInFlight"],
        )
        .await;
    clouds
        .reject(
            "writes-per-minute",
            with(base(), "/rateLimit/writesPerMinute", json!(0)),
            &["spec.rateLimit.writesPerMinute"],
        )
        .await;

    // VIP pools: IPv4 blocks from /16 to /28, names unique, no overlap, inside the allowed ranges.
    let pool_cidr = "cidr must be an IPv4 CIDR range from /16 to /28 with no host bits set";
    for (case, cidr) in [
        ("pool-too-wide", "10.0.0.0/8"),
        ("pool-too-narrow", "10.200.0.0/30"),
        ("pool-host-bits", "10.200.0.1/24"),
        ("pool-ipv6", "fd00::/64"),
        ("pool-not-cidr", "10.200.0.0"),
    ] {
        clouds
            .reject(
                case,
                with(base(), "/vipPools", json!([{"name": "a", "cidr": cidr}])),
                &["spec.vipPools[0].cidr", pool_cidr],
            )
            .await;
    }
    clouds
        .reject(
            "pool-overlap",
            with(
                base(),
                "/vipPools",
                json!([{"name": "a", "cidr": "10.200.0.0/20"}, {"name": "b", "cidr": "10.200.4.0/24"}]),
            ),
            &["spec.vipPools", "vipPools must not overlap each other"],
        )
        .await;
    clouds
        .reject(
            "pool-names-repeat",
            with(
                base(),
                "/vipPools",
                json!([{"name": "a", "cidr": "10.200.0.0/24"}, {"name": "a", "cidr": "10.201.0.0/24"}]),
            ),
            &["spec.vipPools", "vipPools names must not repeat"],
        )
        .await;
    clouds
        .reject(
            "pool-outside-allowed",
            with(
                with(base(), "/allowedDestinationRanges", json!(["10.0.0.0/8"])),
                "/vipPools",
                json!([{"name": "a", "cidr": "192.168.0.0/24"}]),
            ),
            &[
                "spec.vipPools",
                "every vipPools cidr must lie inside one of allowedDestinationRanges",
            ],
        )
        .await;
    clouds
        .accept(
            "pools",
            with(
                with(base(), "/allowedDestinationRanges", json!(["10.0.0.0/8"])),
                "/vipPools",
                json!([{"name": "a", "cidr": "10.200.0.0/20"}, {"name": "b", "cidr": "10.201.0.0/28"}]),
            ),
        )
        .await;
}

#[tokio::test]
async fn unknown_fields_are_refused_or_pruned() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-unknown").await;
    let services = Kind::new::<VirtualService>(&client, Some(&namespace));

    // Server-side apply with strict field validation refuses them, naming the field.
    for (pointer, field) in [("/bogus", ".spec.bogus"), ("/vip/color", ".spec.vip.color")] {
        let name = unique("strict");
        let object = services.object(&name, with(virtual_service_spec(), pointer, json!("x")));
        let err = services
            .api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).validation_strict(),
                &Patch::Apply(&object),
            )
            .await
            .expect_err("strict field validation refuses unknown fields");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{field}: field not declared in schema")),
            "{message}"
        );
    }

    // Without strict validation they are pruned, never stored.
    let created = services
        .create(
            &unique("pruned"),
            with(
                with(virtual_service_spec(), "/bogus", json!(1)),
                "/vip/color",
                json!("blue"),
            ),
        )
        .await
        .expect("created without strict validation");
    let stored = services
        .api
        .get(created.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(
        stored.data["spec"].get("bogus").is_none(),
        "{}",
        stored.data
    );
    assert!(
        stored.data["spec"]["vip"].get("color").is_none(),
        "{}",
        stored.data
    );
}

fn missing_descriptions(schema: &Value, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let path = format!("{path}.{name}");
            *seen += 1;
            let described = property
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(path.clone());
            }
            missing_descriptions(property, &path, missing, seen);
        }
    }
    if let Some(items) = schema.get("items") {
        missing_descriptions(items, &format!("{path}[]"), missing, seen);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        missing_descriptions(values, &format!("{path}{{}}"), missing, seen);
    }
}

/// The `kubectl explain` text: every property of every stored schema has a description.
#[tokio::test]
async fn every_property_is_described() {
    let client = setup().await;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for name in [
        "gcpclouds.adc.dev",
        "virtualservices.adc.dev",
        "vpcroutes.adc.dev",
    ] {
        let crd = crds.get(name).await.unwrap();
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("a schema");
            let schema = serde_json::to_value(schema).unwrap();
            let root = schema["description"].as_str().unwrap_or_default();
            assert!(
                !root.is_empty() && !root.contains("Auto-generated"),
                "{name}: root description {root:?}"
            );
            let mut missing = Vec::new();
            let mut seen = 0;
            missing_descriptions(&schema, "", &mut missing, &mut seen);
            assert!(seen > 15, "{name}: only {seen} properties walked");
            assert!(
                missing.is_empty(),
                "{name}/{}: properties without a description: {missing:?}",
                version.name
            );
        }
    }
}

fn kubectl(args: &[&str]) -> Result<String, String> {
    let plane = PLANE.get();
    let output = std::process::Command::new(&plane.binaries.kubectl)
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .args(args)
        .output()
        .map_err(|err| format!("running kubectl: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Retries a kubectl command while the API server's discovery and OpenAPI catch up with new CRDs.
async fn kubectl_eventually(args: &[&str], wanted: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let args_owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let result = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args_owned.iter().map(String::as_str).collect();
            kubectl(&args)
        })
        .await
        .unwrap();
        let last = match result {
            Ok(out) if wanted.iter().all(|w| out.contains(w)) => return out,
            Ok(out) => out,
            Err(err) => err,
        };
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never showed {wanted:?}; last:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Status written with server-side apply round-trips, and kubectl shows the printer columns,
/// short names, the category and the explain text.
#[tokio::test]
async fn status_printer_columns_and_explain() {
    let client = setup().await;
    let namespace = support::test_namespace(&client, "crd-kubectl").await;
    let services = Kind::new::<VirtualService>(&client, Some(&namespace));
    let vs = services.accept("columns", virtual_service_spec()).await;
    let name = vs.metadata.name.unwrap();

    let mut status = adc_operator::api::VirtualServiceStatus {
        observed_generation: Some(1),
        vip: Some("10.10.0.5".into()),
        active_service_engines: vec!["se-1".into(), "se-2".into()],
        ..Default::default()
    };
    conditions::set_condition(
        &mut status.conditions,
        conditions::READY,
        true,
        "Programmed",
        "routes and firewall rule exist",
        Some(1),
        "2025-01-02T03:04:05Z",
    );
    conditions::set_condition(
        &mut status.conditions,
        conditions::STALLED,
        false,
        "Progressing",
        "",
        Some(1),
        "2025-01-02T03:04:05Z",
    );
    let typed = Api::<VirtualService>::namespaced(client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "adc.dev/v1alpha1",
        "kind": "VirtualService",
        "status": status,
    });
    typed
        .patch_status(
            &name,
            &PatchParams::apply("adc-operator").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("applying the status");
    let read = typed.get_status(&name).await.unwrap();
    assert_eq!(read.status.as_ref(), Some(&status));
    assert!(conditions::condition_true(
        &read.status.unwrap().conditions,
        conditions::READY
    ));

    let table =
        kubectl_eventually(&["get", "adcvs", "-n", &namespace, &name], &["10.10.0.5"]).await;
    let header = table.lines().next().unwrap();
    for column in ["NAME", "VIP", "READY", "ENGINES", "AGE"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("True"), "{table}");
    assert!(table.contains(r#"["se-1","se-2"]"#), "{table}");

    let categories = kubectl_eventually(
        &["get", "adc", "-n", &namespace, "-o", "name"],
        &[&format!("virtualservice.adc.dev/{name}")],
    )
    .await;
    assert!(
        categories.contains("virtualservice.adc.dev/"),
        "{categories}"
    );

    let explain = kubectl_eventually(
        &["explain", "virtualservices.spec.vip.address"],
        &["A fixed IPv4 address"],
    )
    .await;
    assert!(explain.contains("adc.dev"), "{explain}");
    kubectl_eventually(
        &["explain", "vpcroutes.spec.nextHop"],
        &["exactly one of", "ilb"],
    )
    .await;
    kubectl_eventually(
        &["explain", "gcpclouds.spec.rateLimit.writesPerMinute"],
        &["default 1500"],
    )
    .await;
}
