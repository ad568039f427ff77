//! The OpenAPI document of the HTTP API: its info, security schemes and the error responses that
//! the handlers' `#[utoipa::path]` annotations share. The paths come from the router itself
//! (`http::api`), which registers every route together with its annotation, so the document
//! lists exactly the routes served. Served at `GET /openapi.json`, kept in docs/openapi.json.

use std::collections::BTreeMap;

use lanes_protocol::http::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

/// The security scheme of routes that take a user's session token or application JWT. The
/// handlers' `security(...)` attributes spell it out, as they take only literals.
const USER_TOKEN: &str = "user_token";
/// The security scheme of the admin API.
const ADMIN_API_KEY: &str = "admin_api_key";

/// The document's fixed parts; `http::api` adds the paths and their schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lanes",
        // The version of the protocol this describes (docs/PROTOCOL.md), which the internal
        // crates' `0.0.0` does not track.
        version = "1",
        description = "The HTTP API of Lanes, a durable real-time chat server. Frames, rules and \
                       examples are in docs/PROTOCOL.md. Errors are `ErrorBody` with the status \
                       of their `code`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "server", description = "Health, metrics and this document"),
        (name = "accounts", description = "Password accounts, sessions and settings"),
        (name = "conversations", description = "Conversations, members and history"),
        (name = "actions", description = "WebSocket actions over HTTP: lane events, receipts, \
                                          typing and presence"),
        (name = "events", description = "Receiving: long-polling and the WebSocket"),
        (name = "admin", description = "The admin API for an application's backend"),
        (name = "web", description = "The web client served by the binary"),
    )
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            USER_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token (`lt_…`, from `POST /v1/register` or `POST /v1/login`) \
                         or an application JWT whose `sub` is the user id.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from the server's `[admin] api_keys`; without any, the admin \
                         API answers `403 forbidden`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// One error response: an `ErrorBody` with `description`.
fn error_response(status: u16, description: &str) -> BTreeMap<String, RefOr<Response>> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build();
    BTreeMap::from([(status.to_string(), RefOr::T(response))])
}

/// Defines a unit type standing for one documented error status, for `responses(...)`.
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident = $status:literal, $description:literal;)+) => {$(
        $(#[$doc])*
        pub(crate) struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_response($status, $description)
            }
        }
    )+};
}

error_responses! {
    /// 400.
    BadRequest = 400, "`bad_frame` (the body is not JSON, lacks or has an unknown field, or a \
                       field does not parse) or `invalid_field` (a value that is not allowed, in \
                       the body, path or query)";
    /// 401.
    Unauthorized = 401, "`unauthorized`: missing, malformed, expired or revoked credentials";
    /// 403.
    Forbidden = 403, "`forbidden`: not allowed to do this";
    /// 403 of the admin API.
    AdminOff = 403, "`forbidden`: the admin API is off (no `[admin] api_keys`)";
    /// 404.
    NotFound = 404, "`not_found`: no such conversation or user, or the caller is not a member";
    /// 413.
    PayloadTooLarge = 413, "`payload_too_large` (the HTTP body is above 388 KiB) or \
                            `message_too_large` (the text is above the server's limit)";
    /// 429.
    RateLimited = 429, "`rate_limited`: too many of these; retry later";
    /// 503.
    Unavailable = 503, "`storage_unavailable` (retry, with the same client_msg_id for lane \
                        events) or `shutting_down`";
}

/// The OpenAPI document of every route the server serves, as pretty-printed JSON (the form kept
/// in docs/openapi.json).
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let (_, openapi) = crate::http::api().split_for_parts();
    openapi.to_pretty_json()
}
