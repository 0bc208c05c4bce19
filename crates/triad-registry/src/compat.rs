//! Compatibility levels and the checks they imply, by Avro schema-resolution rules.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use crate::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
            .map_err(|_| ApiError::InvalidCompatibilityLevel)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// The same direction(s) against one version only.
    pub fn non_transitive(self) -> Self {
        match self {
            Self::BackwardTransitive => Self::Backward,
            Self::ForwardTransitive => Self::Forward,
            Self::FullTransitive => Self::Full,
            other => other,
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

/// `reader` can read everything `writer` can write. Apache-avro's `Partial` (e.g. a reader
/// union that lacks one of the writer's branches) fails for some data, so it counts as
/// incompatible, as in Java Avro's checker that Confluent uses.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("the reader cannot read every value of the writer (missing union branch or enum symbol)".to_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against `existing` (oldest first, live versions only) under `level`; the
/// messages say which version failed and why.
pub fn check(level: Level, new: &Schema, existing: &[(u32, &Schema)]) -> Result<(), Vec<String>> {
    let against: &[(u32, &Schema)] = if level.is_transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut problems = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Err(e) = can_read(old, new)
        {
            problems.push(format!(
                "version {version}: new schema cannot read data written by it (BACKWARD): {e}"
            ));
        }
        if level.forward()
            && let Err(e) = can_read(new, old)
        {
            problems.push(format!(
                "version {version}: it cannot read data written by the new schema (FORWARD): {e}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    /// V1 plus a field with a default: readable both ways.
    const V2_ADD_DEFAULT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
    /// V1 plus a field without a default: new readers cannot read old data.
    const V2_ADD_REQUIRED: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#;
    /// V1 without `a`: old readers cannot read new data (a has no default).
    const V2_DROP_A: &str = r#"{"type":"record","name":"R","fields":[]}"#;
    /// `a` changes type incompatibly.
    const V2_RETYPE: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    /// V2_ADD_DEFAULT with `b` dropped and `c` added, both with defaults.
    const V3_WITH_C: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"c","type":"long","default":1}]}"#;

    fn ok(level: Level, new: &str, old: &[&str]) -> bool {
        let olds: Vec<Schema> = old.iter().map(|o| s(o)).collect();
        let refs: Vec<(u32, &Schema)> = olds.iter().zip(1u32..).map(|(o, v)| (v, o)).collect();
        check(level, &s(new), &refs).is_ok()
    }

    #[test]
    fn none_accepts_anything() {
        assert!(ok(Level::None, V2_RETYPE, &[V1]));
    }

    #[test]
    fn backward_pairs() {
        assert!(ok(Level::Backward, V2_ADD_DEFAULT, &[V1]));
        assert!(ok(Level::Backward, V2_DROP_A, &[V1]));
        assert!(!ok(Level::Backward, V2_ADD_REQUIRED, &[V1]));
        assert!(!ok(Level::Backward, V2_RETYPE, &[V1]));
    }

    #[test]
    fn forward_pairs() {
        assert!(ok(Level::Forward, V2_ADD_REQUIRED, &[V1]));
        assert!(ok(Level::Forward, V2_ADD_DEFAULT, &[V1]));
        assert!(!ok(Level::Forward, V2_DROP_A, &[V1]));
        assert!(!ok(Level::Forward, V2_RETYPE, &[V1]));
    }

    #[test]
    fn full_pairs() {
        assert!(ok(Level::Full, V2_ADD_DEFAULT, &[V1]));
        assert!(!ok(Level::Full, V2_ADD_REQUIRED, &[V1]));
        assert!(!ok(Level::Full, V2_DROP_A, &[V1]));
    }

    #[test]
    fn transitive_levels_check_every_version() {
        // The oldest version typed `a` as int; the latest as string. A new schema compatible
        // with the latest passes the plain levels and fails the transitive ones.
        let history = [V2_RETYPE, V1];
        for (plain, transitive) in [
            (Level::Backward, Level::BackwardTransitive),
            (Level::Forward, Level::ForwardTransitive),
            (Level::Full, Level::FullTransitive),
        ] {
            assert!(ok(plain, V2_ADD_DEFAULT, &history), "{plain:?}");
            assert!(!ok(transitive, V2_ADD_DEFAULT, &history), "{transitive:?}");
        }
        // Against a consistent history the transitive levels pass.
        assert!(ok(Level::FullTransitive, V3_WITH_C, &[V1, V2_ADD_DEFAULT]));
    }

    #[test]
    fn adding_a_union_branch_is_backward_but_not_forward() {
        let old = r#"{"type":"record","name":"E","fields":[{"name":"body","type":[{"type":"record","name":"A","fields":[]}]}]}"#;
        let new = r#"{"type":"record","name":"E","fields":[{"name":"body","type":[{"type":"record","name":"A","fields":[]},{"type":"record","name":"B","fields":[{"name":"x","type":"int"}]}]}]}"#;
        assert!(ok(Level::Backward, new, &[old]));
        assert!(!ok(Level::Forward, new, &[old]));
    }

    #[test]
    fn level_names_parse_case_insensitively() {
        assert_eq!(
            Level::parse("backward_transitive").unwrap(),
            Level::BackwardTransitive
        );
        assert_eq!(Level::parse("FULL").unwrap(), Level::Full);
        assert_eq!(
            Level::parse("sideways"),
            Err(ApiError::InvalidCompatibilityLevel)
        );
    }
}
