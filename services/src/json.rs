//! JSON request bodies: parsed whole, and when they are wrong, an error that names the field
//! (`n`, `context.scene`, `events[2].kind`, or `body`) for the 400 the caller gets.

/// A request field that is wrong, and how.
#[derive(Clone, Debug, PartialEq, serde::Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a JSON object body into `T`; errors name the field (`events[2].kind`, or `body`).
/// Any other JSON value is refused as the body: serde would read an array into a struct's
/// fields by position and blame `[0]`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Only a whole value is named; anything else is left to the parser's own message (a
        // syntax error at its column).
        use serde_json::Value;
        let found = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(_)) => Some("an array"),
            Ok(Value::String(_)) => Some("a string"),
            Ok(Value::Number(_)) => Some("a number"),
            Ok(Value::Bool(_)) => Some("a boolean"),
            Ok(Value::Null) => Some("null"),
            Ok(Value::Object(_)) | Err(_) => None,
        };
        if let Some(found) = found {
            return Err(FieldError::new(
                "body",
                format!("expected a JSON object, found {found}"),
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // A missing field is reported at its parent (`what_if` for `what_if.replay_of`), an
        // unknown one at itself: name the field, under its parent's path.
        let top = path == "." || path.is_empty();
        let field = if let Some(name) = quoted(&message, "missing field `") {
            if top { name } else { format!("{path}.{name}") }
        } else if let Some(name) = quoted(&message, "unknown field `") {
            if top { name } else { path }
        } else if path == "." || inner.is_syntax() || inner.is_eof() {
            "body".to_string()
        } else {
            path
        };
        FieldError { field, message }
    })
}

fn quoted(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split(prefix).nth(1)?;
    Some(rest.split('`').next()?.to_string())
}
