//! The registry's state and the log records it is folded from. Pure: no I/O. Every mutation
//! is planned here as log records; the server appends them to the `_schemas` topic and only
//! then applies them, so the topic is always the truth and a restart rebuilds the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::ApiError;
use crate::compat::{self, Level};

/// The default compatibility level, as in Confluent Schema Registry.
pub const DEFAULT_LEVEL: Level = Level::Backward;

/// Key of a record of the `_schemas` topic (Confluent's layout, so the topic reads the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    Schema {
        subject: String,
        version: u32,
        magic: u8,
    },
    Config {
        subject: Option<String>,
        magic: u8,
    },
}

/// Value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub deleted: bool,
}

/// Value of a `CONFIG` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: Level,
}

/// A schema reference: `name` as used inside the referring schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// One record to append: a key and a value, `None` for a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    Schema(SchemaValue),
    SchemaTombstone {
        subject: String,
        version: u32,
    },
    Config {
        subject: Option<String>,
        level: Level,
    },
    ConfigTombstone {
        subject: Option<String>,
    },
}

impl LogRecord {
    pub fn key(&self) -> LogKey {
        match self {
            Self::Schema(v) => LogKey::Schema {
                subject: v.subject.clone(),
                version: v.version,
                magic: 1,
            },
            Self::SchemaTombstone { subject, version } => LogKey::Schema {
                subject: subject.clone(),
                version: *version,
                magic: 1,
            },
            Self::Config { subject, .. } | Self::ConfigTombstone { subject } => LogKey::Config {
                subject: subject.clone(),
                magic: 0,
            },
        }
    }

    /// Key and value bytes as stored in the topic.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), serde_json::Error> {
        let key = serde_json::to_vec(&self.key())?;
        let value = match self {
            Self::Schema(v) => Some(serde_json::to_vec(v)?),
            Self::Config { level, .. } => Some(serde_json::to_vec(&ConfigValue {
                compatibility_level: *level,
            })?),
            Self::SchemaTombstone { .. } | Self::ConfigTombstone { .. } => None,
        };
        Ok((key, value))
    }

    /// Parses a record of the topic; `Ok(None)` for key types this registry does not use
    /// (Confluent also writes `NOOP` and `DELETE_SUBJECT` records).
    pub fn from_bytes(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, String> {
        let raw: Json = serde_json::from_slice(key).map_err(|e| format!("key is not JSON: {e}"))?;
        if !matches!(
            raw.get("keytype").and_then(Json::as_str),
            Some("SCHEMA" | "CONFIG")
        ) {
            return Ok(None);
        }
        let key: LogKey = serde_json::from_value(raw).map_err(|e| format!("bad key: {e}"))?;
        Ok(Some(match (key, value) {
            (LogKey::Schema { .. }, Some(v)) => Self::Schema(
                serde_json::from_slice(v).map_err(|e| format!("bad schema value: {e}"))?,
            ),
            (
                LogKey::Schema {
                    subject, version, ..
                },
                None,
            ) => Self::SchemaTombstone { subject, version },
            (LogKey::Config { subject, .. }, Some(v)) => {
                let c: ConfigValue =
                    serde_json::from_slice(v).map_err(|e| format!("bad config value: {e}"))?;
                Self::Config {
                    subject,
                    level: c.compatibility_level,
                }
            }
            (LogKey::Config { subject, .. }, None) => Self::ConfigTombstone { subject },
        }))
    }
}

/// A registration or lookup request body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRequest {
    pub schema: String,
    #[serde(rename = "schemaType", default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
    // Accepted and ignored: Confluent 7.x+ clients may send these.
    #[serde(default)]
    pub metadata: Option<Json>,
    #[serde(rename = "ruleSet", default)]
    pub rule_set: Option<Json>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub version: Option<u32>,
}

/// A version of a subject, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionView {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    id: u32,
    schema: String,
    schema_type: Option<String>,
    references: Vec<Reference>,
    deleted: bool,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    Latest,
    Number(u32),
}

impl VersionSel {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "latest" | "-1" => Ok(Self::Latest),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=i32::MAX as u32).contains(n))
                .map(Self::Number)
                .ok_or_else(|| ApiError::InvalidVersion(s.to_owned())),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    configs: HashMap<Option<String>, Level>,
    /// The largest id ever seen, so ids are never reused.
    max_id: u32,
}

/// Sorts object keys recursively and prints compactly, so whitespace and key order do not
/// give the same schema two ids.
fn normalise(json: &Json) -> String {
    fn sorted(json: &Json) -> Json {
        match json {
            Json::Object(map) => {
                let ordered: BTreeMap<&String, Json> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                Json::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Json::Array(items) => Json::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(json).to_string()
}

impl State {
    pub fn apply(&mut self, record: LogRecord) {
        match record {
            LogRecord::Schema(v) => {
                self.max_id = self.max_id.max(v.id);
                self.subjects.entry(v.subject).or_default().insert(
                    v.version,
                    Version {
                        id: v.id,
                        schema: v.schema,
                        schema_type: v.schema_type,
                        references: v.references,
                        deleted: v.deleted,
                    },
                );
            }
            LogRecord::SchemaTombstone { subject, version } => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
            }
            LogRecord::Config { subject, level } => {
                self.configs.insert(subject, level);
            }
            LogRecord::ConfigTombstone { subject } => {
                self.configs.remove(&subject);
            }
        }
    }

    pub fn global_level(&self) -> Level {
        self.configs.get(&None).copied().unwrap_or(DEFAULT_LEVEL)
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.configs.get(&Some(subject.to_owned())).copied()
    }

    fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    fn versions(&self, subject: &str) -> Result<&BTreeMap<u32, Version>, ApiError> {
        self.subjects
            .get(subject)
            .ok_or_else(|| ApiError::SubjectNotFound(subject.to_owned()))
    }

    fn live(&self, subject: &str) -> impl Iterator<Item = (u32, &Version)> {
        self.subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, v))
    }

    /// The schema texts a schema's references need, dependencies first.
    fn reference_texts(
        &self,
        refs: &[Reference],
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), ApiError> {
        if depth > 32 {
            return Err(ApiError::InvalidSchema(
                "references nest deeper than 32 levels".to_owned(),
            ));
        }
        for r in refs {
            let v = self
                .subjects
                .get(&r.subject)
                .and_then(|vs| vs.get(&r.version))
                .ok_or_else(|| {
                    ApiError::InvalidSchema(format!(
                        "reference {} points to {} version {}, which does not exist",
                        r.name, r.subject, r.version
                    ))
                })?;
            self.reference_texts(&v.references, out, depth + 1)?;
            if !out.contains(&v.schema) {
                out.push(v.schema.clone());
            }
        }
        Ok(())
    }

    /// Parses a schema with its references; `InvalidSchema` names what is wrong.
    fn parse(&self, schema: &str, refs: &[Reference]) -> Result<Schema, ApiError> {
        let mut deps = Vec::new();
        self.reference_texts(refs, &mut deps, 0)?;
        let parsed = if deps.is_empty() {
            Schema::parse_str(schema)
        } else {
            Schema::parse_str_with_list(schema, &deps).map(|(s, _)| s)
        };
        parsed.map_err(|e| ApiError::InvalidSchema(e.to_string()))
    }

    /// Validates a request and returns its normalised text.
    fn validate(&self, req: &SchemaRequest) -> Result<(String, Schema), ApiError> {
        match req.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(ApiError::InvalidSchema(format!(
                    "schemaType {other} is not supported by this registry (AVRO only)"
                )));
            }
        }
        let json: Json = serde_json::from_str(&req.schema)
            .map_err(|e| ApiError::InvalidSchema(format!("schema is not JSON: {e}")))?;
        let parsed = self.parse(&req.schema, &req.references)?;
        Ok((normalise(&json), parsed))
    }

    fn id_of_content(&self, schema: &str, refs: &[Reference]) -> Option<u32> {
        self.subjects
            .values()
            .flat_map(BTreeMap::values)
            .find(|v| v.schema == schema && v.references == refs)
            .map(|v| v.id)
    }

    /// Plans `POST /subjects/{subject}/versions`: the id, and the records to append (none
    /// when the schema is already a live version of the subject).
    pub fn plan_register(
        &self,
        subject: &str,
        req: &SchemaRequest,
    ) -> Result<(u32, Vec<LogRecord>), ApiError> {
        let (text, parsed) = self.validate(req)?;
        if let Some((_, v)) = self
            .live(subject)
            .find(|(_, v)| v.schema == text && v.references == req.references)
        {
            return Ok((v.id, vec![]));
        }
        let mut existing = Vec::new();
        for (n, v) in self.live(subject) {
            existing.push((n, self.parse(&v.schema, &v.references)?));
        }
        let existing_refs: Vec<(u32, &Schema)> = existing.iter().map(|(n, s)| (*n, s)).collect();
        compat::check(self.effective_level(subject), &parsed, &existing_refs).map_err(
            |problems| ApiError::Incompatible {
                subject: subject.to_owned(),
                details: problems.join("; "),
            },
        )?;
        let id = self
            .id_of_content(&text, &req.references)
            .unwrap_or(self.max_id + 1);
        let version = self
            .subjects
            .get(subject)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1);
        let record = LogRecord::Schema(SchemaValue {
            subject: subject.to_owned(),
            version,
            id,
            schema: text,
            schema_type: req.schema_type.clone().filter(|t| t != "AVRO"),
            references: req.references.clone(),
            deleted: false,
        });
        Ok((id, vec![record]))
    }

    /// `POST /subjects/{subject}`: the version of the subject holding this schema.
    pub fn lookup(
        &self,
        subject: &str,
        req: &SchemaRequest,
        deleted: bool,
    ) -> Result<VersionView, ApiError> {
        let versions = self.versions(subject)?;
        let (text, _) = self.validate(req)?;
        versions
            .iter()
            .find(|(_, v)| {
                (deleted || !v.deleted) && v.schema == text && v.references == req.references
            })
            .map(|(n, v)| view(subject, *n, v))
            .ok_or_else(|| ApiError::SchemaNotFound(String::new()))
    }

    pub fn schema_by_id(&self, id: u32) -> Result<VersionView, ApiError> {
        self.subjects
            .iter()
            .flat_map(|(s, vs)| vs.iter().map(move |(n, v)| (s, n, v)))
            .find(|(_, _, v)| v.id == id)
            .map(|(s, n, v)| view(s, *n, v))
            .ok_or_else(|| ApiError::SchemaNotFound(id.to_string()))
    }

    /// The (subject, version) pairs that carry schema `id`.
    pub fn versions_of_id(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(|(_, v)| v.id == id && !v.deleted)
                    .map(move |(n, _)| (s.clone(), *n))
            })
            .collect()
    }

    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted || vs.values().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    pub fn version_numbers(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, ApiError> {
        let list: Vec<u32> = self
            .versions(subject)?
            .iter()
            .filter(|(_, v)| deleted || !v.deleted)
            .map(|(n, _)| *n)
            .collect();
        if list.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_owned()));
        }
        Ok(list)
    }

    fn resolve_version(
        &self,
        subject: &str,
        sel: VersionSel,
        deleted: bool,
    ) -> Result<(u32, &Version), ApiError> {
        let versions = self.versions(subject)?;
        let found = match sel {
            VersionSel::Latest => versions.iter().rev().find(|(_, v)| deleted || !v.deleted),
            VersionSel::Number(n) => versions
                .get_key_value(&n)
                .filter(|(_, v)| deleted || !v.deleted),
        };
        match found {
            Some((n, v)) => Ok((*n, v)),
            None if sel == VersionSel::Latest && !versions.values().any(|v| !v.deleted) => {
                Err(ApiError::SubjectNotFound(subject.to_owned()))
            }
            None => Err(ApiError::VersionNotFound(match sel {
                VersionSel::Latest => "latest".to_owned(),
                VersionSel::Number(n) => n.to_string(),
            })),
        }
    }

    pub fn version(
        &self,
        subject: &str,
        sel: VersionSel,
        deleted: bool,
    ) -> Result<VersionView, ApiError> {
        self.resolve_version(subject, sel, deleted)
            .map(|(n, v)| view(subject, n, v))
    }

    /// Ids of live schemas whose references name `subject`/`version`.
    pub fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let ids: BTreeSet<u32> = self
            .subjects
            .values()
            .flat_map(BTreeMap::values)
            .filter(|v| {
                !v.deleted
                    && v.references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
            })
            .map(|v| v.id)
            .collect();
        ids.into_iter().collect()
    }

    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<LogRecord>), ApiError> {
        let versions = self.versions(subject)?;
        for n in versions.keys() {
            if !self.referenced_by(subject, *n).is_empty() {
                return Err(ApiError::ReferenceExists {
                    subject: subject.to_owned(),
                    version: *n,
                });
            }
        }
        if permanent {
            if versions.values().any(|v| !v.deleted) {
                return Err(ApiError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            let records = versions
                .keys()
                .map(|n| LogRecord::SchemaTombstone {
                    subject: subject.to_owned(),
                    version: *n,
                })
                .collect();
            return Ok((versions.keys().copied().collect(), records));
        }
        let live: Vec<(u32, &Version)> = versions
            .iter()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, v))
            .collect();
        if live.is_empty() {
            return Err(ApiError::SubjectSoftDeleted(subject.to_owned()));
        }
        let records = live
            .iter()
            .map(|(n, v)| LogRecord::Schema(soft_deleted(subject, *n, v)))
            .collect();
        Ok((live.iter().map(|(n, _)| *n).collect(), records))
    }

    pub fn plan_delete_version(
        &self,
        subject: &str,
        sel: VersionSel,
        permanent: bool,
    ) -> Result<(u32, Vec<LogRecord>), ApiError> {
        // A numbered version is found even when soft-deleted, so deleting it twice says so.
        let (n, v) = self.resolve_version(
            subject,
            sel,
            permanent || matches!(sel, VersionSel::Number(_)),
        )?;
        if !self.referenced_by(subject, n).is_empty() {
            return Err(ApiError::ReferenceExists {
                subject: subject.to_owned(),
                version: n,
            });
        }
        if permanent {
            if !v.deleted {
                return Err(ApiError::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: n,
                });
            }
            return Ok((
                n,
                vec![LogRecord::SchemaTombstone {
                    subject: subject.to_owned(),
                    version: n,
                }],
            ));
        }
        if v.deleted {
            return Err(ApiError::VersionSoftDeleted {
                subject: subject.to_owned(),
                version: n,
            });
        }
        Ok((n, vec![LogRecord::Schema(soft_deleted(subject, n, v))]))
    }

    /// `POST /compatibility/subjects/{subject}/versions[/{version}]`: with a version, checks
    /// against that one version in the level's direction(s); without (or `latest` under a
    /// transitive level), against what registration would check.
    pub fn check_compatibility(
        &self,
        subject: &str,
        sel: Option<VersionSel>,
        req: &SchemaRequest,
    ) -> Result<Vec<String>, ApiError> {
        let (_, parsed) = self.validate(req)?;
        let level = self.effective_level(subject);
        let (level, against): (Level, Vec<(u32, &Version)>) = match sel {
            Some(number @ VersionSel::Number(_)) => (
                level.non_transitive(),
                vec![self.resolve_version(subject, number, false)?],
            ),
            Some(VersionSel::Latest) if !level.is_transitive() => (
                level,
                vec![self.resolve_version(subject, VersionSel::Latest, false)?],
            ),
            _ => {
                let live: Vec<(u32, &Version)> = self.live(subject).collect();
                if sel.is_some() && live.is_empty() {
                    return Err(ApiError::SubjectNotFound(subject.to_owned()));
                }
                (level, live)
            }
        };
        let mut parsed_against = Vec::with_capacity(against.len());
        for (n, v) in against {
            parsed_against.push((n, self.parse(&v.schema, &v.references)?));
        }
        let refs: Vec<(u32, &Schema)> = parsed_against.iter().map(|(n, s)| (*n, s)).collect();
        Ok(compat::check(level, &parsed, &refs)
            .err()
            .unwrap_or_default())
    }
}

fn view(subject: &str, version: u32, v: &Version) -> VersionView {
    VersionView {
        subject: subject.to_owned(),
        version,
        id: v.id,
        schema: v.schema.clone(),
        schema_type: v.schema_type.clone(),
        references: v.references.clone(),
    }
}

fn soft_deleted(subject: &str, version: u32, v: &Version) -> SchemaValue {
    SchemaValue {
        subject: subject.to_owned(),
        version,
        id: v.id,
        schema: v.schema.clone(),
        schema_type: v.schema_type.clone(),
        references: v.references.clone(),
        deleted: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(schema: &str) -> SchemaRequest {
        SchemaRequest {
            schema: schema.to_owned(),
            ..SchemaRequest::default()
        }
    }

    fn register(state: &mut State, subject: &str, schema: &str) -> Result<u32, ApiError> {
        let (id, records) = state.plan_register(subject, &req(schema))?;
        for r in records {
            // Through the byte form, as the topic stores it.
            let (k, v) = r.to_bytes().unwrap();
            state.apply(LogRecord::from_bytes(&k, v.as_deref()).unwrap().unwrap());
        }
        Ok(id)
    }

    const A1: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
    const A1_REORDERED: &str =
        r#"{ "fields": [{"type":"int","name":"x"}], "name": "A", "type": "record" }"#;
    const A2: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":"string","default":""}]}"#;

    #[test]
    fn same_normalised_schema_same_id_across_subjects() {
        let mut s = State::default();
        let a = register(&mut s, "a-value", A1).unwrap();
        assert_eq!(register(&mut s, "a-value", A1_REORDERED).unwrap(), a);
        assert_eq!(s.version_numbers("a-value", false).unwrap(), vec![1]);
        assert_eq!(register(&mut s, "b-value", A1).unwrap(), a);
        let two = register(&mut s, "a-value", A2).unwrap();
        assert_ne!(two, a);
        assert_eq!(
            s.version("a-value", VersionSel::Latest, false)
                .unwrap()
                .version,
            2
        );
    }

    #[test]
    fn incompatible_schema_is_refused_with_409() {
        let mut s = State::default();
        register(&mut s, "a-value", A1).unwrap();
        let bad = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"string"}]}"#;
        let err = register(&mut s, "a-value", bad).unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_string().contains("version 1"), "{err}");
    }

    #[test]
    fn invalid_schema_is_42201() {
        let s = State::default();
        for bad in [
            "not json",
            r#"{"type":"record","name":"A"}"#,
            r#"{"type":"nope"}"#,
        ] {
            assert_eq!(
                s.plan_register("x", &req(bad)).unwrap_err().code(),
                42201,
                "{bad}"
            );
        }
        let proto = SchemaRequest {
            schema_type: Some("PROTOBUF".into()),
            ..req(A1)
        };
        assert_eq!(s.plan_register("x", &proto).unwrap_err().code(), 42201);
    }

    #[test]
    fn soft_then_hard_delete() {
        let mut s = State::default();
        let id = register(&mut s, "a-value", A1).unwrap();
        assert_eq!(
            s.plan_delete_subject("a-value", true).unwrap_err().code(),
            40405
        );
        let (versions, records) = s.plan_delete_subject("a-value", false).unwrap();
        assert_eq!(versions, vec![1]);
        records.into_iter().for_each(|r| s.apply(r));
        assert!(s.subjects(false).is_empty());
        assert_eq!(s.subjects(true), vec!["a-value".to_owned()]);
        assert_eq!(
            s.plan_delete_subject("a-value", false).unwrap_err().code(),
            40404
        );
        // A soft-deleted schema is still readable by id.
        assert_eq!(s.schema_by_id(id).unwrap().id, id);
        let (_, records) = s.plan_delete_subject("a-value", true).unwrap();
        records.into_iter().for_each(|r| s.apply(r));
        assert_eq!(
            s.version_numbers("a-value", true).unwrap_err().code(),
            40401
        );
        assert_eq!(s.schema_by_id(id).unwrap_err().code(), 40403);
        // Ids are never reused.
        let next = register(&mut s, "c-value", A2).unwrap();
        assert!(next > id);
    }

    #[test]
    fn version_errors() {
        let mut s = State::default();
        register(&mut s, "a-value", A1).unwrap();
        assert_eq!(
            s.version("a-value", VersionSel::Number(9), false)
                .unwrap_err()
                .code(),
            40402
        );
        assert_eq!(
            s.version("zzz", VersionSel::Latest, false)
                .unwrap_err()
                .code(),
            40401
        );
        assert_eq!(VersionSel::parse("0").unwrap_err().code(), 42202);
        assert_eq!(VersionSel::parse("x").unwrap_err().code(), 42202);
        let (_, r) = s
            .plan_delete_version("a-value", VersionSel::Number(1), false)
            .unwrap();
        r.into_iter().for_each(|r| s.apply(r));
        assert_eq!(
            s.plan_delete_version("a-value", VersionSel::Number(1), false)
                .unwrap_err()
                .code(),
            40406
        );
    }

    #[test]
    fn references_resolve_and_protect_the_referenced() {
        let mut s = State::default();
        let inner = r#"{"type":"record","name":"Inner","namespace":"t","fields":[{"name":"v","type":"int"}]}"#;
        register(&mut s, "inner", inner).unwrap();
        let outer = SchemaRequest {
            references: vec![Reference {
                name: "t.Inner".into(),
                subject: "inner".into(),
                version: 1,
            }],
            ..req(
                r#"{"type":"record","name":"Outer","namespace":"t","fields":[{"name":"i","type":"t.Inner"}]}"#,
            )
        };
        let (id, records) = s.plan_register("outer", &outer).unwrap();
        records.into_iter().for_each(|r| s.apply(r));
        assert_eq!(s.referenced_by("inner", 1), vec![id]);
        assert_eq!(
            s.plan_delete_version("inner", VersionSel::Number(1), false)
                .unwrap_err()
                .code(),
            42206
        );
        let dangling = SchemaRequest {
            references: vec![Reference {
                name: "t.Inner".into(),
                subject: "inner".into(),
                version: 7,
            }],
            ..outer
        };
        assert_eq!(
            s.plan_register("outer2", &dangling).unwrap_err().code(),
            42201
        );
    }

    #[test]
    fn config_levels() {
        let mut s = State::default();
        assert_eq!(s.global_level(), Level::Backward);
        s.apply(LogRecord::Config {
            subject: Some("a-value".into()),
            level: Level::None,
        });
        register(&mut s, "a-value", A1).unwrap();
        let bad = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"string"}]}"#;
        assert!(register(&mut s, "a-value", bad).is_ok());
        s.apply(LogRecord::ConfigTombstone {
            subject: Some("a-value".into()),
        });
        assert_eq!(s.subject_level("a-value"), None);
    }

    #[test]
    fn unknown_key_types_are_skipped_and_bad_records_reported() {
        assert_eq!(
            LogRecord::from_bytes(br#"{"keytype":"NOOP","magic":0}"#, None),
            Ok(None)
        );
        assert!(LogRecord::from_bytes(b"garbage", None).is_err());
        assert!(
            LogRecord::from_bytes(
                br#"{"keytype":"SCHEMA","subject":"a","version":1,"magic":1}"#,
                Some(b"{}")
            )
            .is_err()
        );
    }
}
