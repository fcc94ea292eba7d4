//! The per-object dispatch mode (`--gcp-dispatch per-object`): what most controllers do, kept
//! as the benchmarks' baseline. Each worker sends one call, waits on its operation with
//! `operations.wait`, then reads the resource back, one object at a time.

use super::budget::{Lane, RateGroup};
use super::calls::{get_call, mutation_call};
use super::client::Call;
use super::error::GcpError;
use super::queue::Dispatch;
use super::reader::Reader;
use super::types::Operation;

/// Per-object mode: one call, one `operations.wait` loop, one read-back, per worker at a time.
/// One mutation, the per-object way: send, `operations.wait` until DONE, read an insert back.
pub(super) async fn call(
    reader: &Reader,
    project: &str,
    dispatch: &Dispatch,
) -> Result<(), GcpError> {
    let answer = reader
        .client
        .send(&mutation_call(
            &dispatch.mutation,
            project,
            &dispatch.request_id,
        ))
        .await?;
    let mut op: Operation = serde_json::from_slice(&answer.body)
        .map_err(|err| GcpError::Decode(format!("operation: {err}")))?;
    while !op.is_done() {
        reader
            .budget
            .acquire(RateGroup::OperationRead, "", 1, Lane::Bulk)
            .await;
        let wait = Call {
            method: reqwest::Method::POST,
            path: format!(
                "projects/{project}/{}/operations/{}/wait",
                op.scope(),
                op.name
            ),
            query: Vec::new(),
            body: None,
            group: RateGroup::OperationRead,
            method_name: "compute.operations.wait",
        };
        let answer = reader.client.send(&wait).await?;
        op = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(format!("operation: {err}")))?;
    }
    if let Some(err) = op.failure() {
        return Err(err);
    }
    if dispatch.mutation.is_insert() {
        // Confirm, as controllers that trust nothing do.
        reader
            .budget
            .acquire(RateGroup::Read, "", 1, Lane::Bulk)
            .await;
        reader
            .client
            .send(&get_call(&dispatch.target, project))
            .await?;
    }
    Ok(())
}
