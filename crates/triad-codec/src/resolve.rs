//! Avro schema resolution (the spec's "Schema Resolution" section) from a value decoded with
//! the writer's schema to the reader's schema.
//!
//! apache-avro's own `Value::resolve` chooses a union branch by trying each reader branch in
//! turn, so a record of a later branch is silently read as an earlier record whose fields all
//! have defaults (e.g. a `TaskResultReported` read back as `CancelWorkflow`). The spec says a
//! writer's union branch is matched to the reader branch *of the same name*; this module does
//! that, and follows the spec for records, enums, arrays, maps and promotions.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UnionSchema};
use apache_avro::types::Value;

type Names<'a> = HashMap<Name, &'a Schema>;

/// Why a value could not be resolved; the path names where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.path, self.reason)
    }
}

/// Resolves `value` (decoded with `writer`) to `reader`.
pub fn resolve(value: Value, writer: &Schema, reader: &Schema) -> Result<Value, ResolveError> {
    let err = |reason: String| ResolveError {
        path: "$".to_owned(),
        reason,
    };
    let wn =
        apache_avro::schema::ResolvedSchema::try_from(writer).map_err(|e| err(e.to_string()))?;
    let rn =
        apache_avro::schema::ResolvedSchema::try_from(reader).map_err(|e| err(e.to_string()))?;
    let ctx = Ctx {
        writer_names: wn.get_names().clone(),
        reader_names: rn.get_names().clone(),
    };
    ctx.resolve(value, writer, reader, &mut vec!["$".to_owned()])
}

struct Ctx<'a> {
    writer_names: Names<'a>,
    reader_names: Names<'a>,
}

fn deref<'a>(schema: &'a Schema, names: &Names<'a>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        other => other,
    }
}

fn full_name(schema: &Schema) -> Option<String> {
    schema.name().map(|n| n.fullname(None))
}

impl<'a> Ctx<'a> {
    fn fail(path: &[String], reason: impl Into<String>) -> ResolveError {
        ResolveError {
            path: path.join("."),
            reason: reason.into(),
        }
    }

    fn resolve(
        &self,
        value: Value,
        writer: &'a Schema,
        reader: &'a Schema,
        path: &mut Vec<String>,
    ) -> Result<Value, ResolveError> {
        let writer = deref(writer, &self.writer_names);
        let reader = deref(reader, &self.reader_names);
        match (writer, reader, value) {
            (Schema::Union(wu), _, Value::Union(i, inner)) => {
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| wu.variants().get(i))
                    .ok_or_else(|| Self::fail(path, format!("writer union has no branch {i}")))?;
                self.resolve(*inner, branch, reader, path)
            }
            (_, Schema::Union(ru), value) => {
                let (index, branch) = self.pick_branch(writer, ru).ok_or_else(|| {
                    Self::fail(
                        path,
                        format!(
                            "no branch of the reader's union matches writer type {}",
                            kind(writer)
                        ),
                    )
                })?;
                let inner = self.resolve(value, writer, branch, path)?;
                let index =
                    u32::try_from(index).map_err(|_| Self::fail(path, "union too large"))?;
                Ok(Value::Union(index, Box::new(inner)))
            }
            (Schema::Record(w), Schema::Record(r), Value::Record(fields)) => {
                self.resolve_record(w, r, fields, path)
            }
            (Schema::Enum(w), Schema::Enum(r), Value::Enum(_, symbol)) => {
                if w.name != r.name {
                    return Err(Self::fail(
                        path,
                        format!("enum {} read as {}", w.name, r.name),
                    ));
                }
                let symbol = if r.symbols.contains(&symbol) {
                    symbol
                } else if let Some(default) = &r.default {
                    default.clone()
                } else {
                    return Err(Self::fail(
                        path,
                        format!("symbol {symbol} unknown to the reader"),
                    ));
                };
                let index = r
                    .symbols
                    .iter()
                    .position(|s| *s == symbol)
                    .unwrap_or_default();
                let index = u32::try_from(index).map_err(|_| Self::fail(path, "enum too large"))?;
                Ok(Value::Enum(index, symbol))
            }
            (Schema::Array(w), Schema::Array(r), Value::Array(items)) => {
                let items = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        path.push(format!("[{i}]"));
                        let out = self.resolve(v, &w.items, &r.items, path);
                        path.pop();
                        out
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Value::Array(items))
            }
            (Schema::Map(w), Schema::Map(r), Value::Map(entries)) => {
                let mut out = HashMap::with_capacity(entries.len());
                for (k, v) in entries {
                    path.push(format!("[{k:?}]"));
                    let resolved = self.resolve(v, &w.types, &r.types, path);
                    path.pop();
                    out.insert(k, resolved?);
                }
                Ok(Value::Map(out))
            }
            (Schema::Fixed(w), Schema::Fixed(r), v @ Value::Fixed(..)) => {
                if w.name != r.name || w.size != r.size {
                    return Err(Self::fail(
                        path,
                        format!("fixed {} read as {}", w.name, r.name),
                    ));
                }
                Ok(v)
            }
            (w, r, v) => promote(v, w, r).ok_or_else(|| {
                Self::fail(
                    path,
                    format!("writer type {} cannot be read as {}", kind(w), kind(r)),
                )
            }),
        }
    }

    fn resolve_record(
        &self,
        w: &'a RecordSchema,
        r: &'a RecordSchema,
        fields: Vec<(String, Value)>,
        path: &mut Vec<String>,
    ) -> Result<Value, ResolveError> {
        if w.name.name() != r.name.name()
            && !r
                .aliases
                .iter()
                .flatten()
                .any(|a| a.name() == w.name.name())
        {
            return Err(Self::fail(
                path,
                format!("record {} read as {}", w.name, r.name),
            ));
        }
        let mut by_name: HashMap<String, (Value, &'a Schema)> = fields
            .into_iter()
            .zip(&w.fields)
            .map(|((name, value), field)| (name, (value, &field.schema)))
            .collect();
        let mut out = Vec::with_capacity(r.fields.len());
        for field in &r.fields {
            path.push(field.name.clone());
            let value = match by_name.remove(&field.name) {
                Some((value, writer_schema)) => {
                    self.resolve(value, writer_schema, &field.schema, path)?
                }
                None => {
                    let default = field.default.clone().ok_or_else(|| {
                        Self::fail(
                            path,
                            "field missing from the writer's data and has no default",
                        )
                    })?;
                    default_value(default, &field.schema, &self.reader_names)
                        .map_err(|e| Self::fail(path, format!("bad default: {e}")))?
                }
            };
            path.pop();
            out.push((field.name.clone(), value));
        }
        Ok(Value::Record(out))
    }

    /// The reader branch for a writer schema: same full name for named types, else the same
    /// type, else the first branch the writer's type promotes to.
    fn pick_branch(&self, writer: &'a Schema, ru: &'a UnionSchema) -> Option<(usize, &'a Schema)> {
        let branches: Vec<(usize, &'a Schema)> = ru
            .variants()
            .iter()
            .map(|b| deref(b, &self.reader_names))
            .enumerate()
            .collect();
        if let Some(name) = full_name(writer) {
            return branches
                .into_iter()
                .find(|(_, b)| full_name(b).as_deref() == Some(name.as_str()));
        }
        branches
            .iter()
            .copied()
            .find(|(_, b)| kind(b) == kind(writer))
            .or_else(|| {
                branches
                    .iter()
                    .copied()
                    .find(|(_, b)| promotable(writer, b))
            })
    }
}

/// The Avro type name of a schema, logical types included.
fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Ref { name } => name.fullname(None),
        s => format!("{:?}", apache_avro::schema::SchemaKind::from(s)),
    }
}

fn promotable(w: &Schema, r: &Schema) -> bool {
    matches!(
        (w, r),
        (Schema::Int, Schema::Long | Schema::Float | Schema::Double)
            | (Schema::Long, Schema::Float | Schema::Double)
            | (Schema::Float, Schema::Double)
            | (Schema::String, Schema::Bytes)
            | (Schema::Bytes, Schema::String)
    )
}

/// Same type (logical types must agree) or one of the spec's promotions.
fn promote(value: Value, w: &Schema, r: &Schema) -> Option<Value> {
    if kind(w) == kind(r) {
        return Some(value);
    }
    Some(match (value, r) {
        (Value::Int(i), Schema::Long) => Value::Long(i64::from(i)),
        (Value::Int(i), Schema::Float) => Value::Float(i as f32),
        (Value::Int(i), Schema::Double) => Value::Double(f64::from(i)),
        (Value::Long(i), Schema::Float) => Value::Float(i as f32),
        (Value::Long(i), Schema::Double) => Value::Double(i as f64),
        (Value::Float(f), Schema::Double) => Value::Double(f64::from(f)),
        (Value::String(s), Schema::Bytes) => Value::Bytes(s.into_bytes()),
        (Value::Bytes(b), Schema::String) => Value::String(String::from_utf8(b).ok()?),
        _ => return None,
    })
}

/// A field default (JSON) as a value of the field's schema. For a union the default belongs
/// to the first branch (Avro spec).
fn default_value(
    default: serde_json::Value,
    schema: &Schema,
    names: &Names<'_>,
) -> Result<Value, String> {
    let schema = deref(schema, names);
    if let Schema::Union(u) = schema {
        let first = u.variants().first().ok_or("empty union")?;
        let inner = default_value(default, first, names)?;
        return Ok(Value::Union(0, Box::new(inner)));
    }
    // Empty collections need no item schema; resolving them through apache-avro would fail
    // on an item type that is a reference to a named record defined elsewhere in the file.
    match (schema, &default) {
        (Schema::Map(_), serde_json::Value::Object(o)) if o.is_empty() => {
            return Ok(Value::Map(std::collections::HashMap::new()));
        }
        (Schema::Array(_), serde_json::Value::Array(a)) if a.is_empty() => {
            return Ok(Value::Array(Vec::new()));
        }
        _ => {}
    }
    let value = Value::try_from(default).map_err(|e| e.to_string())?;
    value.resolve(schema).map_err(|e| e.to_string())
}

impl std::error::Error for ResolveError {}
