//! Calling an interface's methods by name with JSON arguments (feature `json`): what tools
//! such as `multispace call` use to reach any method of any service without compiling a
//! caller for it.
//!
//! multispace-stubgen emits the per-interface half when built with `Builder::json(true)`:
//! `json_methods()` (each method's name, parameters, result and doc, as text) and
//! `call_json(client, method, args, options)`, which parses the arguments into the very
//! request type the typed client sends, calls, and turns the deserialized result into JSON.
//! The interface's own types then also derive serde (through [`crate::serde`]). This module
//! holds what those share: [`JsonMethod`], [`JsonCallError`], and the argument rules.
//!
//! Arguments are given as a JSON array of positional values (`[2, 3]`), an object keyed by
//! parameter name (`{"a": 2, "b": 3}`), or, for a method of one parameter, the bare value
//! (`"hello"`). A method without parameters takes `null`, `[]` or `{}`. Omitted trailing or
//! named arguments are `null`, which an `Option` parameter reads as `None`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::error::CallError;

/// One method of an interface, described for JSON callers and help texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonMethod {
    /// The service (trait) name.
    pub service: &'static str,
    /// The method's name in the interface file (snake_case).
    pub name: &'static str,
    /// Each parameter's name and type, as written in the interface file.
    pub params: &'static [(&'static str, &'static str)],
    /// The result type as written (`()` for none).
    pub returns: &'static str,
    /// True for `#[oneway]` and `#[multicast]` methods (called reliably here; no result).
    pub one_way: bool,
    /// The first paragraph of the method's doc comment.
    pub doc: &'static str,
}

impl JsonMethod {
    /// `add(a: i64, b: i64) -> i64`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        let mut s = format!("{}({})", self.name, params.join(", "));
        if self.returns != "()" {
            s.push_str(" -> ");
            s.push_str(self.returns);
        }
        s
    }

    /// The JSON forms the arguments may take, e.g. `[a, b] or {"a": …, "b": …}`.
    pub fn argument_forms(&self) -> String {
        match self.params {
            [] => "no arguments (null, [] or {})".to_owned(),
            [(n, _)] => format!("{n} itself, [{n}] or {{\"{n}\": …}}"),
            ps => {
                let names: Vec<&str> = ps.iter().map(|(n, _)| *n).collect();
                let keys: Vec<String> = names.iter().map(|n| format!("\"{n}\": …")).collect();
                format!("[{}] or {{{}}}", names.join(", "), keys.join(", "))
            }
        }
    }
}

/// Why a JSON call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonCallError {
    /// The interface has no method of that name.
    #[error("`{service}` has no method `{method}` (its methods: {})", known.join(", "))]
    UnknownMethod {
        /// The service.
        service: &'static str,
        /// The name asked for.
        method: String,
        /// The methods it has.
        known: Vec<&'static str>,
    },
    /// The arguments do not fit the method's parameters (nothing was sent).
    #[error("bad arguments for {}.{}: {reason}; give {}", method.service, method.signature(), method.argument_forms())]
    BadArguments {
        /// The method.
        method: &'static JsonMethod,
        /// What did not fit (the JSON parser's words, naming the argument and its type).
        reason: String,
    },
    /// The call failed (not reachable, refused, the handler's error, ...).
    #[error("{}.{} failed", method.service, method.name)]
    Call {
        /// The method.
        method: &'static JsonMethod,
        /// What failed.
        #[source]
        source: CallError,
    },
    /// The call ran, but its result has no JSON form (e.g. a map with non-string keys).
    #[error("the result of {}.{} cannot be written as JSON", method.service, method.name)]
    Result {
        /// The method.
        method: &'static JsonMethod,
        /// What the JSON writer said.
        #[source]
        source: serde_json::Error,
    },
}

impl JsonCallError {
    /// The rpc error, if the call itself failed.
    pub fn call_error(&self) -> Option<&CallError> {
        match self {
            JsonCallError::Call { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The index of the method called `name` in `methods`: the exact name, or else the one name
/// that matches ignoring case, `_` and `-` (`centroid_sum`, `centroidSum`, `centroid-sum`).
pub fn find(methods: &[JsonMethod], name: &str) -> Option<usize> {
    if let Some(i) = methods.iter().position(|m| m.name == name) {
        return Some(i);
    }
    let fold = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect::<String>();
    let want = fold(name);
    let mut found = methods.iter().enumerate().filter(|(_, m)| fold(m.name) == want).map(|(i, _)| i);
    match (found.next(), found.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// The error for a method name [`find`] did not find.
pub fn unknown_method(service: &'static str, method: &str, methods: &'static [JsonMethod]) -> JsonCallError {
    JsonCallError::UnknownMethod { service, method: method.to_owned(), known: methods.iter().map(|m| m.name).collect() }
}

fn bad(method: &'static JsonMethod, reason: String) -> JsonCallError {
    JsonCallError::BadArguments { method, reason }
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Check the arguments of a method without parameters: `null`, `[]` or `{}`.
pub fn no_args(m: &'static JsonMethod, args: &Value) -> Result<(), JsonCallError> {
    if is_empty(args) {
        Ok(())
    } else {
        Err(bad(m, format!("it takes no arguments, got {}", kind(args))))
    }
}

/// The argument of a method of one parameter: the bare value if it reads as the parameter's
/// type, else `[value]` or `{"name": value}`.
pub fn one_arg<T: DeserializeOwned>(m: &'static JsonMethod, args: &Value) -> Result<T, JsonCallError> {
    let (name, ty) = m.params.first().copied().unwrap_or(("?", "?"));
    let bare = match T::deserialize(args) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    // When neither reading fits, tell why the one the caller more likely meant failed: the
    // named form if the key is the parameter's name; for `[x]`, the bare reading if the
    // parameter is itself a sequence (or a struct, which serde also reads from one).
    let takes_sequences = || match T::deserialize(&Value::Array(Vec::new())) {
        Ok(_) => true,
        Err(e) => !e.to_string().starts_with("invalid type"),
    };
    let wrapped = match args {
        Value::Array(a) if a.len() == 1 => Some((&a[0], takes_sequences())),
        Value::Object(o) if o.len() == 1 && o.contains_key(name) => Some((&o[name], false)),
        _ => None,
    };
    match wrapped {
        Some((inner, prefer_bare)) => T::deserialize(inner).map_err(|e| {
            let e = if prefer_bare { bare.to_string() } else { e.to_string() };
            bad(m, format!("argument `{name}` ({ty}): {e}"))
        }),
        None if is_empty(args) => {
            T::deserialize(&Value::Null).map_err(|_| bad(m, format!("missing argument `{name}` ({ty})")))
        }
        None => Err(bad(m, format!("argument `{name}` ({ty}): {bare}"))),
    }
}

/// The arguments of a method of two or more parameters, one per parameter in order
/// (`None`: not given), from an array of positional values or an object keyed by name.
pub fn split_args(m: &'static JsonMethod, args: Value) -> Result<Vec<Option<Value>>, JsonCallError> {
    let n = m.params.len();
    match args {
        Value::Null => Ok(vec![None; n]),
        Value::Array(a) if a.len() > n => Err(bad(m, format!("expected at most {n} arguments, got {}", a.len()))),
        Value::Array(a) => {
            let mut v: Vec<Option<Value>> = a.into_iter().map(Some).collect();
            v.resize(n, None);
            Ok(v)
        }
        Value::Object(mut o) => {
            let v = m.params.iter().map(|(name, _)| o.remove(*name)).collect();
            match o.keys().next() {
                Some(extra) => {
                    let names: Vec<&str> = m.params.iter().map(|(n, _)| *n).collect();
                    Err(bad(m, format!("unknown argument `{extra}` (parameters: {})", names.join(", "))))
                }
                None => Ok(v),
            }
        }
        other => Err(bad(m, format!("expected {n} arguments, got {}", kind(&other)))),
    }
}

/// Argument `i` from [`split_args`], read as the parameter's type; one not given reads as
/// `null` (so an `Option` parameter may be left out).
pub fn arg<T: DeserializeOwned>(m: &'static JsonMethod, i: usize, args: &[Option<Value>]) -> Result<T, JsonCallError> {
    let (name, ty) = m.params.get(i).copied().unwrap_or(("?", "?"));
    match args.get(i).and_then(Option::as_ref) {
        Some(v) => T::deserialize(v).map_err(|e| bad(m, format!("argument `{name}` ({ty}): {e}"))),
        None => T::deserialize(&Value::Null).map_err(|_| bad(m, format!("missing argument `{name}` ({ty})"))),
    }
}

/// The error for a failed call of `m`.
pub fn call_failed(method: &'static JsonMethod, source: CallError) -> JsonCallError {
    JsonCallError::Call { method, source }
}

/// The deserialized result of `m` as JSON.
pub fn result<T: Serialize>(
    m: &'static JsonMethod,
    owned: Result<T, rkyv::rancor::Error>,
) -> Result<Value, JsonCallError> {
    let owned = owned.map_err(|e| call_failed(m, CallError::InvalidResponse(e)))?;
    serde_json::to_value(&owned).map_err(|source| JsonCallError::Result { method: m, source })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ADD: JsonMethod = JsonMethod {
        service: "Calc",
        name: "add",
        params: &[("a", "i64"), ("b", "i64")],
        returns: "i64",
        one_way: false,
        doc: "",
    };
    const GET: JsonMethod = JsonMethod {
        service: "Calc",
        name: "get",
        params: &[("name", "String"), ("limit", "Option<u32>")],
        returns: "Option<i64>",
        one_way: false,
        doc: "",
    };
    const ECHO: JsonMethod = JsonMethod {
        service: "Calc",
        name: "echo",
        params: &[("data", "Vec<u8>")],
        returns: "Vec<u8>",
        one_way: false,
        doc: "",
    };
    const PING: JsonMethod =
        JsonMethod { service: "Calc", name: "ping", params: &[], returns: "()", one_way: false, doc: "" };

    fn two(m: &'static JsonMethod, v: Value) -> Result<(i64, i64), JsonCallError> {
        let v = split_args(m, v)?;
        Ok((arg(m, 0, &v)?, arg(m, 1, &v)?))
    }

    #[test]
    fn positional_and_named_arguments_read_alike() {
        assert_eq!(two(&ADD, json!([2, 3])).unwrap(), (2, 3));
        assert_eq!(two(&ADD, json!({"b": 3, "a": 2})).unwrap(), (2, 3));
        let e = two(&ADD, json!([2])).unwrap_err().to_string();
        assert!(e.contains("missing argument `b` (i64)") && e.contains("add(a: i64, b: i64) -> i64"), "{e}");
        let e = two(&ADD, json!([2, 3, 4])).unwrap_err().to_string();
        assert!(e.contains("at most 2 arguments, got 3"), "{e}");
        let e = two(&ADD, json!({"a": 1, "c": 2})).unwrap_err().to_string();
        assert!(e.contains("unknown argument `c` (parameters: a, b)"), "{e}");
        let e = two(&ADD, json!(["x", 3])).unwrap_err().to_string();
        assert!(e.contains("argument `a` (i64): invalid type: string \"x\", expected i64"), "{e}");
        assert!(e.ends_with("give [a, b] or {\"a\": …, \"b\": …}"), "{e}");
        let e = two(&ADD, json!(5)).unwrap_err().to_string();
        assert!(e.contains("expected 2 arguments, got a number"), "{e}");
    }

    #[test]
    fn an_option_parameter_may_be_left_out() {
        let v = split_args(&GET, json!(["k"])).unwrap();
        assert_eq!(arg::<String>(&GET, 0, &v).unwrap(), "k");
        assert_eq!(arg::<Option<u32>>(&GET, 1, &v).unwrap(), None);
        let v = split_args(&GET, json!({"name": "k", "limit": 4})).unwrap();
        assert_eq!(arg::<Option<u32>>(&GET, 1, &v).unwrap(), Some(4));
    }

    #[test]
    fn one_parameter_takes_the_bare_value_or_a_wrapped_one() {
        assert_eq!(one_arg::<Vec<u8>>(&ECHO, &json!([1, 2])).unwrap(), [1, 2]);
        assert_eq!(one_arg::<Vec<u8>>(&ECHO, &json!([[1, 2]])).unwrap(), [1, 2]);
        assert_eq!(one_arg::<Vec<u8>>(&ECHO, &json!({"data": [7]})).unwrap(), [7]);
        assert_eq!(one_arg::<Vec<u8>>(&ECHO, &json!([])).unwrap(), Vec::<u8>::new());
        let e = one_arg::<Vec<u8>>(&ECHO, &json!([1, 300])).unwrap_err().to_string();
        assert!(e.contains("argument `data` (Vec<u8>): invalid value: integer `300`, expected u8"), "{e}");
        let e = one_arg::<Vec<u8>>(&ECHO, &Value::Null).unwrap_err().to_string();
        assert!(e.contains("missing argument `data`"), "{e}");
        assert_eq!(one_arg::<String>(&ECHO, &json!("hi")).unwrap(), "hi");
        assert_eq!(one_arg::<String>(&ECHO, &json!(["hi"])).unwrap(), "hi");
        // Neither reading fits: the error of the likelier one.
        let e = one_arg::<Vec<(u8, u8)>>(&ECHO, &json!([[1]])).unwrap_err().to_string();
        assert!(e.contains("invalid length 1, expected a tuple of size 2"), "{e}");
        let e = one_arg::<u64>(&ECHO, &json!(["x"])).unwrap_err().to_string();
        assert!(e.contains("invalid type: string \"x\", expected u64"), "{e}");
        let e = one_arg::<Vec<u8>>(&ECHO, &json!({"data": "x"})).unwrap_err().to_string();
        assert!(e.contains("invalid type: string \"x\", expected a sequence"), "{e}");
    }

    #[test]
    fn no_parameters_take_null_or_empty() {
        for v in [Value::Null, json!([]), json!({})] {
            no_args(&PING, &v).unwrap();
        }
        let e = no_args(&PING, &json!([1])).unwrap_err().to_string();
        assert!(e.contains("takes no arguments, got an array"), "{e}");
    }

    #[test]
    fn method_names_match_exactly_then_loosely() {
        const MS: &[JsonMethod] = &[ADD, GET, ECHO, PING];
        let ms = MS;
        assert_eq!(find(ms, "echo"), Some(2));
        assert_eq!(find(ms, "ECHO"), Some(2));
        assert_eq!(find(ms, "nope"), None);
        let sum = JsonMethod { name: "centroid_sum", ..ADD };
        assert_eq!(find(&[sum], "centroidSum"), Some(0));
        assert_eq!(find(&[sum], "centroid-sum"), Some(0));
        let e = unknown_method("Calc", "nope", ms).to_string();
        assert_eq!(e, "`Calc` has no method `nope` (its methods: add, get, echo, ping)");
    }

    #[test]
    fn results_become_json_and_failures_keep_the_rpc_error() {
        assert_eq!(result(&ADD, Ok(5i64)).unwrap(), json!(5));
        let e = call_failed(&ADD, CallError::DeadlineExceeded);
        assert!(matches!(e.call_error(), Some(CallError::DeadlineExceeded)));
        assert_eq!(e.to_string(), "Calc.add failed");
        assert_eq!(PING.signature(), "ping()");
        assert_eq!(GET.signature(), "get(name: String, limit: Option<u32>) -> Option<i64>");
    }
}
