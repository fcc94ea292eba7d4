//! Injected faults (`--faults`, `POST /_emulator/faults`): each call draws its own.

use std::time::Duration;

use rand::Rng;

/// Probabilities of each fault, per call.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Faults {
    /// 500 backendError.
    pub http500: f64,
    /// 503 backendError.
    pub http503: f64,
    /// 403 rateLimitExceeded, as a spent rate quota answers.
    pub ratelimit: f64,
    /// The connection is cut after the request was processed (a lost response), drawn once per
    /// HTTP request (a batch is one).
    pub reset: f64,
    /// The operation ends DONE with an INTERNAL_ERROR and changes nothing.
    pub opfail: f64,
    /// Probability and extra delay (scaled by `--time-scale`) of a slow answer.
    pub slow: f64,
    #[serde(with = "millis")]
    pub slow_by: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// What a call drew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Draw {
    pub error: Option<u16>,
    pub rate_limited: bool,
    pub opfail: bool,
    pub slow: bool,
}

/// Why a fault spec was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultSpecError {
    #[error("fault '{0}': expected NAME=PROBABILITY (slow=P:DURATION), e.g. http500=0.05")]
    Shape(String),
    #[error("fault '{0}': unknown; known: http500, http503, ratelimit, reset, opfail, slow")]
    Unknown(String),
    #[error("fault '{name}': probability '{value}' is not a number between 0 and 1")]
    Probability { name: String, value: String },
    #[error("fault 'slow': duration '{0}' is not like 2s, 500ms or 1.5s")]
    Duration(String),
    #[error("faults http500, http503 and ratelimit add up to {0}, more than 1")]
    Sum(f64),
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * unit))
}

impl Faults {
    /// Parses `http500=0.05,http503=0.02,ratelimit=0.02,reset=0.01,opfail=0.01,slow=0.05:2s`;
    /// the empty string means no faults.
    pub fn parse(spec: &str) -> Result<Faults, FaultSpecError> {
        let mut faults = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| FaultSpecError::Shape(item.to_string()))?;
            let (probability, duration) = match value.split_once(':') {
                Some((p, d)) if name == "slow" => (p, Some(d)),
                Some(_) => return Err(FaultSpecError::Shape(item.to_string())),
                None => (value, None),
            };
            let p: f64 = probability
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=1.0).contains(p))
                .ok_or_else(|| FaultSpecError::Probability {
                    name: name.to_string(),
                    value: probability.to_string(),
                })?;
            match name {
                "http500" => faults.http500 = p,
                "http503" => faults.http503 = p,
                "ratelimit" => faults.ratelimit = p,
                "reset" => faults.reset = p,
                "opfail" => faults.opfail = p,
                "slow" => {
                    let text = duration.unwrap_or("2s");
                    faults.slow = p;
                    faults.slow_by = parse_duration(text)
                        .ok_or_else(|| FaultSpecError::Duration(text.to_string()))?;
                }
                other => return Err(FaultSpecError::Unknown(other.to_string())),
            }
        }
        let sum = faults.http500 + faults.http503 + faults.ratelimit;
        if sum > 1.0 + 1e-9 {
            return Err(FaultSpecError::Sum(sum));
        }
        Ok(faults)
    }

    /// Whether any fault is configured.
    pub fn any(&self) -> bool {
        self.http500 + self.http503 + self.ratelimit + self.reset + self.opfail + self.slow > 0.0
    }

    /// Draws the faults of one inner call.
    pub fn draw(&self, rng: &mut impl Rng) -> Draw {
        let mut draw = Draw::default();
        if !self.any() {
            return draw;
        }
        let u: f64 = rng.r#gen();
        if u < self.http500 {
            draw.error = Some(500);
        } else if u < self.http500 + self.http503 {
            draw.error = Some(503);
        } else if u < self.http500 + self.http503 + self.ratelimit {
            draw.rate_limited = true;
        }
        draw.opfail = rng.r#gen::<f64>() < self.opfail;
        draw.slow = rng.r#gen::<f64>() < self.slow;
        draw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_the_documented_spec() {
        let faults = Faults::parse(
            "http500=0.05,http503=0.02,ratelimit=0.02,reset=0.01,opfail=0.01,slow=0.05:2s",
        )
        .unwrap();
        assert_eq!(faults.http500, 0.05);
        assert_eq!(faults.reset, 0.01);
        assert_eq!(faults.slow_by, Duration::from_secs(2));
        assert!(Faults::parse("").unwrap() == Faults::default());
        assert_eq!(
            Faults::parse("slow=0.1:250ms").unwrap().slow_by,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn refuses_bad_specs_by_name() {
        assert!(matches!(
            Faults::parse("http500"),
            Err(FaultSpecError::Shape(_))
        ));
        assert!(matches!(
            Faults::parse("boom=0.1"),
            Err(FaultSpecError::Unknown(_))
        ));
        assert!(matches!(
            Faults::parse("http500=2"),
            Err(FaultSpecError::Probability { .. })
        ));
        assert!(matches!(
            Faults::parse("slow=0.1:2h"),
            Err(FaultSpecError::Duration(_))
        ));
        assert!(matches!(
            Faults::parse("http500=0.6,http503=0.6"),
            Err(FaultSpecError::Sum(_))
        ));
    }

    #[test]
    fn draws_are_deterministic_and_near_their_rates() {
        let faults = Faults::parse("http500=0.1,ratelimit=0.2,opfail=0.5").unwrap();
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..10_000)
                .map(|_| faults.draw(&mut rng))
                .collect::<Vec<_>>()
        };
        let draws = run(42);
        assert_eq!(draws, run(42));
        let errors = draws.iter().filter(|d| d.error == Some(500)).count();
        let limited = draws.iter().filter(|d| d.rate_limited).count();
        let opfail = draws.iter().filter(|d| d.opfail).count();
        assert!((800..1200).contains(&errors), "{errors}");
        assert!((1800..2200).contains(&limited), "{limited}");
        assert!((4700..5300).contains(&opfail), "{opfail}");
    }
}
