//! `Long`: the GraphQL scalar for 64-bit integers.
//!
//! GraphQL's `Int` is a signed 32-bit integer, and conforming clients (graphql-js among them)
//! reject larger values. Costs in micro-credits pass 2^31 at about 2 147 credits, token and
//! task sums in the analytics sooner or later, so every amount the API returns (costs,
//! tokens, sizes, latencies, counts) is a `Long`. Sequences stay `Int`: a workflow's events
//! are bounded by its limits, and clients pass them back as `fromSequence: Int`. It travels as a JSON number, as REST sends it; JavaScript clients read it exactly
//! up to 2^53, far above any cost, count or sequence TRIAD produces.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use serde::Serialize;
use tokio_postgres::types::{FromSql, Type};

/// A 64-bit integer: a JSON number in REST and in GraphQL (scalar `Long`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Long(pub i64);

/// A 64-bit integer (GraphQL's `Int` is 32-bit): a JSON number, exact in JavaScript up to 2^53.
#[Scalar]
impl ScalarType for Long {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_i64()
                .map(Long)
                .ok_or_else(|| InputValueError::custom("a Long must be a whole number")),
            // A string of digits too, for clients that keep 64-bit values as strings.
            Value::String(s) => s
                .parse()
                .map(Long)
                .map_err(|_| InputValueError::custom("a Long must be a whole number")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(self.0.into())
    }
}

impl<'a> FromSql<'a> for Long {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        i64::from_sql(ty, raw).map(Long)
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
    }
}

impl From<i64> for Long {
    fn from(v: i64) -> Self {
        Self(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_carries_values_past_32_bits_both_ways() {
        let big = Long(5_000_000_000);
        assert_eq!(big.to_value(), Value::Number(5_000_000_000i64.into()));
        assert_eq!(
            Long::parse(Value::Number(5_000_000_000i64.into())).unwrap(),
            big
        );
        assert_eq!(
            Long::parse(Value::String("5000000000".into())).unwrap(),
            big
        );
        assert_eq!(serde_json::to_string(&big).unwrap(), "5000000000");
        assert!(Long::parse(Value::String("5e9".into())).is_err());
        assert!(Long::parse(Value::Boolean(true)).is_err());
        let fraction = serde_json::Number::from_f64(1.5).unwrap();
        assert!(Long::parse(Value::Number(fraction)).is_err());
    }
}
