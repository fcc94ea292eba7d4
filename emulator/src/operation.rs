//! Long-running operations: their lifecycle (PENDING → RUNNING → DONE), what they change when
//! they finish, and their JSON form.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::kinds::CollectionKey;
use crate::names::link;

/// What an operation changes when it completes successfully.
#[derive(Debug, Clone)]
pub enum Effect {
    /// The reserved resource becomes visible.
    Create { key: CollectionKey, name: String },
    /// The resource disappears.
    Delete { key: CollectionKey, name: String },
    /// The resource's stored JSON is replaced.
    Replace {
        key: CollectionKey,
        name: String,
        json: Box<str>,
    },
    /// Nothing (a failed call that still yields an operation, e.g. QUOTA_EXCEEDED).
    Nothing,
    /// Several effects, applied in order.
    Many(Vec<Effect>),
    /// An address gains a user (`users[]`, `status: IN_USE`).
    AddUser {
        key: CollectionKey,
        name: String,
        user: String,
    },
    /// An address loses a user (`status: RESERVED` when none is left).
    RemoveUser {
        key: CollectionKey,
        name: String,
        user: String,
    },
    /// An instance group's members change (instance names of its zone). `network` and
    /// `subnetwork` (links) are set on the group if it has none yet.
    Members {
        zone: String,
        group: String,
        add: Vec<String>,
        remove: Vec<String>,
        network: Option<String>,
        subnetwork: Option<String>,
    },
}

/// Why an operation ended in error.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub http_status: u16,
    pub http_message: &'static str,
}

impl Failure {
    /// A resource quota breach: `Quota 'ROUTES' exceeded.  Limit: 250.0 globally.` (two spaces,
    /// as observed).
    pub fn quota(metric: &str, limit: u64, region: Option<&str>) -> Self {
        let place = match region {
            Some(region) => format!("in region {region}"),
            None => "globally".to_string(),
        };
        Self {
            code: "QUOTA_EXCEEDED".into(),
            message: format!("Quota '{metric}' exceeded.  Limit: {limit}.0 {place}."),
            http_status: 403,
            http_message: "FORBIDDEN",
        }
    }

    /// An injected internal failure (`--faults opfail=`).
    pub fn internal() -> Self {
        Self {
            code: "INTERNAL_ERROR".into(),
            message: "Internal error. Please try again or contact Google Support.".into(),
            http_status: 500,
            http_message: "INTERNAL SERVER ERROR",
        }
    }
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: u64,
    pub name: String,
    /// `global`, `regions/R` or `zones/Z`.
    pub scope: String,
    pub operation_type: &'static str,
    pub target_path: String,
    pub target_id: u64,
    pub user: String,
    pub client_operation_id: Option<String>,
    pub insert_time: Instant,
    /// When it starts RUNNING; `None` while queued behind a busy network.
    pub start_time: Option<Instant>,
    /// When it is (or will be) DONE; `None` while queued.
    pub end_time: Option<Instant>,
    /// How long it runs once started.
    pub run_for: Duration,
    /// Set once its effect has been applied.
    pub finished: bool,
    pub failure: Option<Failure>,
    pub effect: Effect,
    /// The network whose mutation slot it holds while RUNNING.
    pub network_slot: Option<String>,
}

/// The three states Compute reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Done,
}

impl Status {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Done => "DONE",
        }
    }
}

/// The timestamp format, parsed once: parsing it again for every stamp was a tenth of the
/// emulator's CPU while operations were listed by the thousand.
static STAMP: std::sync::LazyLock<Vec<chrono::format::Item<'static>>> =
    std::sync::LazyLock::new(|| {
        chrono::format::StrftimeItems::new("%Y-%m-%dT%H:%M:%S%.3f%:z").collect()
    });

/// Converts monotonic instants into the RFC 3339 timestamps Compute emits.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_wall: chrono::DateTime<chrono::Utc>,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            origin_wall: chrono::Utc::now(),
        }
    }

    /// RFC 3339 with milliseconds in a Pacific offset, as Compute's own timestamps look
    /// (`2016-03-24T14:53:37.170-07:00`; the offset is fixed at -07:00).
    pub fn timestamp(&self, at: Instant) -> String {
        let wall = self.wall(at);
        let pacific = chrono::FixedOffset::west_opt(7 * 3600).unwrap_or_else(|| {
            chrono::FixedOffset::east_opt(0).unwrap_or_else(|| unreachable!("zero offset"))
        });
        wall.with_timezone(&pacific)
            .format_with_items(STAMP.iter())
            .to_string()
    }

    /// Milliseconds since the Unix epoch of the wall time [`Clock::timestamp`] stamps: the
    /// stamps of two instants compare as these do.
    pub fn millis(&self, at: Instant) -> i64 {
        self.wall(at).timestamp_millis()
    }

    /// The wall time of `at`.
    fn wall(&self, at: Instant) -> chrono::DateTime<chrono::Utc> {
        let elapsed = at.saturating_duration_since(self.origin);
        self.origin_wall
            + chrono::Duration::from_std(elapsed).unwrap_or_else(|_| chrono::Duration::zero())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Operation {
    /// The status at `now`.
    pub fn status(&self, now: Instant) -> Status {
        if self.finished {
            return Status::Done;
        }
        match self.start_time {
            Some(start) if now >= start => Status::Running,
            _ => Status::Pending,
        }
    }

    /// The operation's URL path, `projects/P/global/operations/NAME`.
    pub fn path(&self, project: &str) -> String {
        format!("projects/{project}/{}/operations/{}", self.scope, self.name)
    }

    /// The JSON body at `now`.
    pub fn to_json(&self, project: &str, now: Instant, clock: &Clock) -> Value {
        self.render(project, now, clock, None)
    }

    /// Only the top-level `fields` of the JSON body at `now` (what a list filter reads: the
    /// rest is rendered only for the operations it selects).
    pub fn to_json_fields(
        &self,
        project: &str,
        now: Instant,
        clock: &Clock,
        fields: &[String],
    ) -> Value {
        self.render(project, now, clock, Some(fields))
    }

    fn render(&self, project: &str, now: Instant, clock: &Clock, only: Option<&[String]>) -> Value {
        let status = self.status(now);
        let mut out = Wanted {
            map: Map::new(),
            only,
        };
        out.put("kind", || json!("compute#operation"));
        out.put("id", || json!(self.id.to_string()));
        out.put("name", || json!(self.name));
        out.put("operationType", || json!(self.operation_type));
        out.put("targetLink", || json!(link(&self.target_path)));
        out.put("targetId", || json!(self.target_id.to_string()));
        out.put("status", || json!(status.as_str()));
        out.put("user", || json!(self.user));
        out.put("progress", || {
            json!(if status == Status::Done { 100 } else { 0 })
        });
        out.put("insertTime", || json!(clock.timestamp(self.insert_time)));
        if let Some(start) = self.start_time
            && status != Status::Pending
        {
            out.put("startTime", || json!(clock.timestamp(start)));
        }
        if status == Status::Done
            && let Some(end) = self.end_time
        {
            out.put("endTime", || json!(clock.timestamp(end)));
        }
        if let Some(id) = &self.client_operation_id {
            out.put("clientOperationId", || json!(id));
        }
        if let Some(region) = self.scope.strip_prefix("regions/") {
            out.put("region", || {
                json!(link(&format!("projects/{project}/regions/{region}")))
            });
        }
        if let Some(zone) = self.scope.strip_prefix("zones/") {
            out.put("zone", || {
                json!(link(&format!("projects/{project}/zones/{zone}")))
            });
        }
        if status == Status::Done
            && let Some(failure) = &self.failure
        {
            out.put(
                "error",
                || json!({"errors": [{"code": failure.code, "message": failure.message}]}),
            );
            out.put("httpErrorStatusCode", || json!(failure.http_status));
            out.put("httpErrorMessage", || json!(failure.http_message));
        }
        out.put("selfLink", || json!(link(&self.path(project))));
        Value::Object(out.map)
    }
}

/// The JSON object being rendered, and which top-level fields of it are wanted (all: `None`).
struct Wanted<'a> {
    map: Map<String, Value>,
    only: Option<&'a [String]>,
}

impl Wanted<'_> {
    /// Sets `key` to what `value` makes, if the key is wanted (and only then makes it).
    fn put(&mut self, key: &str, value: impl FnOnce() -> Value) {
        if self.only.is_none_or(|only| only.iter().any(|f| f == key)) {
            self.map.insert(key.to_string(), value());
        }
    }
}

/// A name in the observed shape `operation-<13-digit epoch ms>-<13 hex>-<8 hex>-<8 hex>`.
pub fn operation_name(epoch_ms: u64, rng: &mut impl rand::Rng) -> String {
    format!(
        "operation-{epoch_ms:013}-{:013x}-{:08x}-{:08x}",
        rng.r#gen::<u64>() & 0x000f_ffff_ffff_ffff,
        rng.r#gen::<u32>(),
        rng.r#gen::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn name_has_the_observed_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let name = operation_name(1_458_856_416_788, &mut rng);
        let re =
            regex::Regex::new(r"^operation-\d{13}-[0-9a-f]{13}-[0-9a-f]{8}-[0-9a-f]{8}$").unwrap();
        assert!(re.is_match(&name), "{name}");
    }

    #[test]
    fn quota_message_matches_the_observed_template() {
        let failure = Failure::quota("ROUTES", 250, None);
        assert_eq!(
            failure.message,
            "Quota 'ROUTES' exceeded.  Limit: 250.0 globally."
        );
        let regional = Failure::quota("FORWARDING_RULES", 15, Some("us-central1"));
        assert_eq!(
            regional.message,
            "Quota 'FORWARDING_RULES' exceeded.  Limit: 15.0 in region us-central1."
        );
    }

    #[tokio::test]
    async fn timestamps_have_millis_and_offset() {
        let clock = Clock::new();
        let stamp = clock.timestamp(Instant::now());
        let re = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-07:00$").unwrap();
        assert!(re.is_match(&stamp), "{stamp}");
    }
}
