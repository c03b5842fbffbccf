//! JSON access generated with the stubs: calling the calculator's methods by name with JSON
//! arguments in every accepted form, and what comes back when they do not fit or the call
//! fails. Both drivers.

use std::rc::Rc;

use multispace_rpc::json::JsonCallError;
use multispace_rpc::{spawn, CallError, CallOptions, Client, ErrorCode, Server};
use multispace_services::calc::{self, Point};
use multispace_services::Calculator;
use multispace_tests::{each_driver, must};
use serde_json::{json, Value};

fn serve(imp: Rc<Calculator>) -> Client {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), [calc::service_rc(imp)]).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    Client::new(addr)
}

async fn call(c: &Client, method: &str, args: Value) -> Result<Value, JsonCallError> {
    must(method, calc::call_json(c, method, args, CallOptions::default())).await
}

#[test]
fn every_calc_method_answers_json() {
    each_driver(|_| async {
        let imp = Rc::new(Calculator::new("json"));
        let c = serve(imp.clone());
        // Positional, named, and loosely named.
        assert_eq!(call(&c, "add", json!([2, 3])).await.unwrap(), json!(5));
        assert_eq!(call(&c, "add", json!({"a": 2, "b": 3})).await.unwrap(), json!(5));
        assert_eq!(call(&c, "ADD", json!({"b": -7, "a": 2})).await.unwrap(), json!(-5));
        // No parameters: null, [] or {}; no result: null.
        for none in [Value::Null, json!([]), json!({})] {
            assert_eq!(call(&c, "ping", none).await.unwrap(), Value::Null);
        }
        assert_eq!(call(&c, "whoami", Value::Null).await.unwrap(), json!("json"));
        // One parameter: bare, in an array, or by name.
        assert_eq!(call(&c, "echo", json!([1, 2, 3])).await.unwrap(), json!([1, 2, 3]));
        assert_eq!(call(&c, "echo", json!([[4]])).await.unwrap(), json!([4]));
        assert_eq!(call(&c, "echo", json!({"data": []})).await.unwrap(), json!([]));
        assert_eq!(call(&c, "accumulate", json!(5)).await.unwrap(), json!(5));
        assert_eq!(call(&c, "accumulate", json!([6])).await.unwrap(), json!(11));
        // Struct-typed arguments and results, through the types' serde derives.
        let points = json!([{"x": 1, "y": 2}, {"x": 10, "y": 20}]);
        assert_eq!(call(&c, "centroid_sum", points.clone()).await.unwrap(), json!({"x": 11, "y": 22}));
        assert_eq!(call(&c, "centroidSum", json!({"points": points})).await.unwrap(), json!({"x": 11, "y": 22}));
        // Options both ways.
        assert_eq!(call(&c, "get", json!("k")).await.unwrap(), Value::Null);
        assert_eq!(call(&c, "set", json!(["k", 7])).await.unwrap(), Value::Null);
        assert_eq!(call(&c, "get", json!({"name": "k"})).await.unwrap(), json!(7));
        // One-way methods are called reliably: done when the call returns.
        assert_eq!(call(&c, "log", json!("by json")).await.unwrap(), Value::Null);
        assert_eq!(call(&c, "announce", json!({"x": 3, "y": 4})).await.unwrap(), Value::Null);
        assert_eq!(imp.log_lines(), ["by json"]);
        assert_eq!(imp.announcements(), [Point { x: 3, y: 4 }]);
        assert_eq!(imp.register(), 11);
    });
}

#[test]
fn failures_say_what_went_wrong() {
    each_driver(|_| async {
        let c = serve(Rc::new(Calculator::new("errors")));
        // The handler's application error, kept typed.
        match call(&c, "divide", json!([1, 0])).await.unwrap_err() {
            JsonCallError::Call { source: CallError::Status(s), method, .. } => {
                assert_eq!(method.name, "divide");
                assert_eq!(s.code(), ErrorCode::Application);
                assert_eq!(s.message(), "division by zero");
            }
            other => panic!("expected the application error, got {other:?}"),
        }
        assert_eq!(call(&c, "divide", json!([9, 3])).await.unwrap(), json!(3));
        // An unknown method lists the known ones.
        let e = call(&c, "multiply", json!([2, 3])).await.unwrap_err();
        assert!(matches!(e, JsonCallError::UnknownMethod { .. }), "{e:?}");
        assert!(e.to_string().contains("ping, add, divide"), "{e}");
        // Arguments that do not fit name the argument, the expected type and the forms.
        let e = call(&c, "add", json!(["2", 3])).await.unwrap_err().to_string();
        assert!(e.contains("argument `a` (i64): invalid type: string \"2\", expected i64"), "{e}");
        assert!(e.contains("Calc.add(a: i64, b: i64) -> i64") && e.contains("give [a, b]"), "{e}");
        let e = call(&c, "add", json!({"a": 1})).await.unwrap_err().to_string();
        assert!(e.contains("missing argument `b` (i64)"), "{e}");
        let e = call(&c, "centroid_sum", json!([{"x": 1}])).await.unwrap_err().to_string();
        assert!(e.contains("argument `points` (Vec<Point>)") && e.contains("missing field `y`"), "{e}");
        let e = call(&c, "ping", json!([1])).await.unwrap_err();
        assert!(matches!(e, JsonCallError::BadArguments { .. }), "{e:?}");
    });
}

#[test]
fn the_node_control_interface_has_json_access_too() {
    let names: Vec<&str> = multispace_node::control::json_methods().iter().map(|m| m.name).collect();
    assert!(names.contains(&"lookup") && names.contains(&"start_instance"), "{names:?}");
    let keiretsu = multispace_services::keiretsu::api::json_methods();
    let inject = keiretsu.iter().find(|m| m.name == "inject_message").unwrap();
    assert_eq!(inject.signature(), "inject_message(to: String, from: String, text: String, msg_id: u64) -> bool");
    // The generated types round-trip through JSON as their fields.
    let p: Point = serde_json::from_value(json!({"x": 1, "y": -1})).unwrap();
    assert_eq!(serde_json::to_value(p).unwrap(), json!({"x": 1, "y": -1}));
}
