//! The API's OpenAPI 3.1 description, served at `GET /openapi.json`. It is generated from the
//! handlers' own `#[utoipa::path]` annotations and request and answer types as the router is
//! built ([`super::router`] registers each documented route through `utoipa_axum`, so a route
//! cannot be served without being described), plus what this module adds: the two bearer
//! schemes (`client_jwt` for the app, `admin_token` for operators), the tags, and the one error
//! body every refusal has.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use fleet_proto::api_error::{ErrorBody, ErrorDetail};

/// The refusals of every JSON API route (the framework's and the handlers').
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// Malformed request: the message names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing, malformed, expired or wrong bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Unknown session, node, pool, booking or route.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Body larger than 64 KiB.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// A body that declares a media type other than JSON.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// No room for the session, the controller is warming up or standing by with no leader
    /// known: try again (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// A bug in the controller (logged); the request may be retried.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// A conflict with the state of the fleet (a full session, a dead node).
#[derive(utoipa::IntoResponses)]
pub enum ConflictRefusal {
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// The security schemes and the document's description.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_jwt",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An HS256 client JWT signed by the app backend with one of \
                         `[[auth.api_keys]]` (header `kid`; claims `sub`, `aud`, `exp`, and \
                         optionally `session` and `participant` to narrow it).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as served: `doc` in JSON, with utoipa 5.5's Link objects mended (it writes
/// their `operationId`, `operationRef` and `requestBody` in snake case, which
/// openapi-spec-validator rejects and schemathesis cannot follow).
pub fn document(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).unwrap_or_default();
    let links = json["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| r.get_mut("links").and_then(|l| l.as_object_mut()))
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(snake) {
                link.insert(camel.to_string(), v);
            }
        }
    }
    json
}

/// The document's frame; the routes' paths are added as the router is built.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Media fleet controller",
        description = "The signaling API the app calls (client JWT), the ops API operators \
                       call (admin token), bookings, and the probes. Every refusal is \
                       `{\"error\":{\"code\",\"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "signaling", description = "Sessions for the app and its clients (client JWT)."),
        (name = "bookings", description = "Sessions booked ahead (client JWT; listing also takes the admin token)."),
        (name = "ops", description = "Nodes, regions, pools, scaling and demand for operators (admin token)."),
        (name = "dashboard", description = "The live dashboard page and its event stream (admin token)."),
        (name = "probes", description = "Health, readiness and Prometheus metrics (no token)."),
        (name = "demo", description = "The demo call page."),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_both_schemes() {
        let (_, doc) = super::super::documented_routes().split_for_parts();
        let json = document(&doc);
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemes = &json["components"]["securitySchemes"];
        assert_eq!(schemes["client_jwt"]["bearerFormat"], "JWT");
        assert_eq!(schemes["admin_token"]["scheme"], "bearer");
        // Every operation names its tag and, under /v1, a security scheme and the error body.
        let paths = json["paths"].as_object().unwrap();
        assert!(paths.len() >= 20, "{:?}", paths.keys());
        // The probes the deployments point at are described where they are served.
        for probe in [
            fleet_proto::deploy::HEALTHZ,
            fleet_proto::deploy::READYZ,
            fleet_proto::deploy::METRICS,
        ] {
            assert!(paths.contains_key(probe), "{probe} missing");
        }
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{method} {path}"
                );
                for link in op["responses"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(|r| r["links"].as_object())
                    .flat_map(|l| l.values())
                {
                    assert!(link["operationId"].is_string(), "{method} {path}: {link}");
                }
                if path.starts_with("/v1/") {
                    assert!(op["security"].is_array(), "{method} {path} has no security");
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {path}: no 401"
                    );
                }
            }
        }
    }
}
