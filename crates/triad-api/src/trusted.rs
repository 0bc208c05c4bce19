//! Trusted operations (issue 8, docs/access.md): in production a node can execute only the
//! GraphQL documents its operators registered (`api.trusted_operations_file`), so a stolen
//! key cannot explore the schema or run expensive ad-hoc queries. A client sends a registered
//! document whole, or only its SHA-256 as `extensions.persistedQuery.sha256Hash` (the Apollo
//! convention); anything else fails with `OPERATION_NOT_TRUSTED` before it is parsed. The
//! check is a GraphQL extension, so it holds over HTTP and WebSocket alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::{ErrorExtensionValues, Request, ServerError, ServerResult};
use triad_auth::api_keys::sha256_hex;

/// The registered documents by the hex SHA-256 of their text.
#[derive(Debug, Clone, Default)]
pub struct TrustedOperations {
    by_hash: Arc<BTreeMap<String, String>>,
}

/// Why a trusted-operations file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("api.trusted_operations_file: not a JSON object of name → GraphQL document: {0}")]
    Format(String),
    #[error("api.trusted_operations_file: {name}: {reason}")]
    Document { name: String, reason: String },
    #[error("api.trusted_operations_file: lists no operation")]
    Empty,
}

impl TrustedOperations {
    /// From the file's text: `{"name": "query text", …}`; each document must parse.
    pub fn from_json(text: &str) -> Result<Self, FileError> {
        let documents: BTreeMap<String, String> =
            serde_json::from_str(text).map_err(|e| FileError::Format(e.to_string()))?;
        if documents.is_empty() {
            return Err(FileError::Empty);
        }
        let mut by_hash = BTreeMap::new();
        for (name, document) in documents {
            async_graphql::parser::parse_query(&document).map_err(|e| FileError::Document {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            by_hash.insert(sha256_hex(&document), document);
        }
        Ok(Self {
            by_hash: Arc::new(by_hash),
        })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The request as it may run: its query is a registered document (filled in from the
    /// hash when only the hash was sent), or the refusal.
    pub fn admit(&self, mut request: Request) -> Result<Request, ServerError> {
        let hash = request
            .extensions
            .remove("persistedQuery")
            .and_then(|v| v.into_json().ok())
            .and_then(|v| {
                v.get("sha256Hash")
                    .and_then(|h| h.as_str())
                    .map(str::to_owned)
            });
        if request.query.is_empty() {
            let known = hash.as_ref().and_then(|h| self.by_hash.get(h));
            return match known {
                Some(document) => {
                    request.query.clone_from(document);
                    Ok(request)
                }
                None => Err(refusal("no registered operation has this sha256Hash")),
            };
        }
        let actual = sha256_hex(&request.query);
        if hash.is_some_and(|h| h != actual) {
            return Err(refusal("the sha256Hash does not match the query"));
        }
        if self.by_hash.contains_key(&actual) {
            Ok(request)
        } else {
            Err(refusal(
                "this node runs only registered operations (api.trusted_operations_file)",
            ))
        }
    }
}

fn refusal(message: &str) -> ServerError {
    let mut e = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", "OPERATION_NOT_TRUSTED");
    e.extensions = Some(extensions);
    e
}

impl ExtensionFactory for TrustedOperations {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Admit(self.clone()))
    }
}

struct Admit(TrustedOperations);

#[async_trait::async_trait]
impl Extension for Admit {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let request = self.0.admit(request).inspect_err(|e| {
            tracing::info!(reason = %e.message, "GraphQL operation refused: not trusted");
        })?;
        next.run(ctx, request).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIST: &str = "query List { workflows(first: 10) { edges { cursor } } }";

    fn with_hash(query: &str, hash: &str) -> Request {
        let mut r = Request::new(query);
        r.extensions.insert(
            "persistedQuery".to_owned(),
            async_graphql::Value::from_json(serde_json::json!({"version": 1, "sha256Hash": hash}))
                .unwrap(),
        );
        r
    }

    fn trusted() -> TrustedOperations {
        TrustedOperations::from_json(&serde_json::json!({ "list": LIST }).to_string()).unwrap()
    }

    #[test]
    fn only_registered_documents_run_whole_or_by_hash() {
        let t = trusted();
        assert_eq!(t.admit(Request::new(LIST)).unwrap().query, LIST);
        let other = t.admit(Request::new("{ __schema { types { name } } }"));
        assert!(other.is_err());
        let by_hash = with_hash("", &sha256_hex(LIST));
        assert_eq!(t.admit(by_hash).unwrap().query, LIST);
        let unknown = with_hash("", "00");
        assert!(
            t.admit(with_hash("{ models { modelId } }", &sha256_hex(LIST)))
                .is_err()
        );
        let e = t.admit(unknown).unwrap_err();
        assert_eq!(
            e.extensions.unwrap().get("code"),
            Some(&async_graphql::Value::from("OPERATION_NOT_TRUSTED"))
        );
    }

    #[test]
    fn the_file_is_checked_when_loaded() {
        assert!(matches!(
            TrustedOperations::from_json("{}"),
            Err(FileError::Empty)
        ));
        assert!(matches!(
            TrustedOperations::from_json("[1]"),
            Err(FileError::Format(_))
        ));
        let bad = serde_json::json!({"broken": "query {"}).to_string();
        assert!(
            matches!(TrustedOperations::from_json(&bad), Err(FileError::Document { name, .. }) if name == "broken")
        );
    }
}
