//! Redirector stubs over several instances that die mid-run: idempotent calls keep
//! succeeding on the survivors; non-idempotent calls are never silently repeated and say
//! whether they may have run. Both drivers.

use std::future::pending;
use std::time::Duration;

use multispace_rpc::{spawn, CallError, Message, Policy, RedirectConfig, RedirectError, Service, Status};
use multispace_services::calc::{self, CalcClient, CalcRedirector};
use multispace_services::Calculator;
use multispace_tests::{each_driver, must, until, Instance};

fn calculator(name: &'static str) -> impl FnOnce() -> Service + Send + 'static {
    move || calc::service(Calculator::new(name))
}

/// An instance whose `add` and `accumulate` never answer (it is stuck, or about to die).
fn stuck() -> Service {
    Service::builder(calc::SERVICE)
        .method(calc::method_id::ADD, |_ctx, _req: Message<calc::AddArgs>| async {
            pending::<()>().await;
            Ok::<i64, Status>(0)
        })
        .method(calc::method_id::ACCUMULATE, |_ctx, _req: Message<calc::AccumulateArgs>| async {
            pending::<()>().await;
            Ok::<i64, Status>(0)
        })
        .build()
}

fn config(policy: Policy) -> RedirectConfig {
    RedirectConfig { policy, down_for: Duration::from_secs(60), ..RedirectConfig::default() }
}

#[test]
fn idempotent_calls_keep_succeeding_while_instances_die() {
    each_driver(|kind| async move {
        let instances: Vec<Instance> =
            ["a", "b", "c"].into_iter().map(|n| Instance::start(kind, calculator(n))).collect();
        let r = CalcRedirector::with_config(instances.iter().map(|i| i.addr), config(Policy::RoundRobin));
        let mut answered_by = std::collections::BTreeMap::new();
        for i in 0..300i64 {
            if i == 100 {
                instances[0].kill();
            }
            if i == 200 {
                instances[1].kill();
            }
            let sum = must("add", r.add(i, 1)).await.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
            assert_eq!(sum.to_native(), i + 1);
            if i % 10 == 0 {
                let who = must("whoami", r.whoami()).await.unwrap();
                *answered_by.entry(who.as_str().to_owned()).or_insert(0) += 1;
            }
        }
        // Every instance served while it lived; the last one serves alone at the end.
        assert_eq!(answered_by.keys().cloned().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(must("whoami", r.whoami()).await.unwrap().as_str(), "c");
    });
}

#[test]
fn a_non_idempotent_call_lost_mid_flight_is_not_repeated_and_says_it_may_have_run() {
    each_driver(|kind| async move {
        let doomed = Instance::start(kind, stuck);
        let good_inst = Instance::start(kind, calculator("good"));
        let r = CalcRedirector::with_config([doomed.addr, good_inst.addr], config(Policy::RoundRobin));
        let call = spawn({
            let r = r.clone();
            async move { r.accumulate(5).await.map(|v| v.to_native()) }
        });
        until("call in flight on the doomed instance", || {
            r.redirector().outstanding().iter().any(|&(a, n)| a == doomed.addr && n == 1)
        })
        .await;
        doomed.kill();
        let err = must("call fails", call).await.unwrap_err();
        match &err {
            RedirectError::Failed { attempts: 1, may_have_run: true, last: CallError::ConnectionLost } => {}
            other => panic!("expected a single lost attempt, got {other:?}"),
        }
        assert!(err.may_have_run());
        // The other instance never saw it.
        let direct = CalcClient::new(good_inst.addr);
        assert_eq!(must("register", direct.accumulate(0)).await.unwrap().to_native(), 0);
    });
}

#[test]
fn an_idempotent_call_lost_mid_flight_is_repeated_elsewhere() {
    each_driver(|kind| async move {
        let doomed = Instance::start(kind, stuck);
        let good = Instance::start(kind, calculator("good"));
        let r = CalcRedirector::with_config([doomed.addr, good.addr], config(Policy::RoundRobin));
        let call = spawn({
            let r = r.clone();
            async move { r.add(2, 3).await.map(|v| v.to_native()) }
        });
        until("call in flight on the doomed instance", || {
            r.redirector().outstanding().iter().any(|&(a, n)| a == doomed.addr && n == 1)
        })
        .await;
        doomed.kill();
        assert_eq!(must("call fails over", call).await.unwrap(), 5);
    });
}

#[test]
fn a_call_that_never_reached_a_dead_instance_fails_over_even_if_not_idempotent() {
    each_driver(|kind| async move {
        let dead = Instance::start(kind, calculator("dead"));
        let dead_addr = dead.addr;
        drop(dead);
        let good = Instance::start(kind, calculator("good"));
        let r = CalcRedirector::with_config([dead_addr, good.addr], config(Policy::RoundRobin));
        // Round robin starts at the dead one: connect is refused, so the call did not run
        // there and may go elsewhere.
        assert_eq!(must("accumulate", r.accumulate(7)).await.unwrap().to_native(), 7);
        assert_eq!(must("accumulate", r.accumulate(1)).await.unwrap().to_native(), 8, "ran exactly once each");
    });
}

#[test]
fn a_stuck_instance_is_abandoned_after_the_attempt_timeout_for_idempotent_calls() {
    each_driver(|kind| async move {
        let slow = Instance::start(kind, stuck);
        let good = Instance::start(kind, calculator("good"));
        let cfg = RedirectConfig { attempt_timeout: Some(Duration::from_millis(50)), ..config(Policy::RoundRobin) };
        let r = CalcRedirector::with_config([slow.addr, good.addr], cfg);
        assert_eq!(must("add", r.add(1, 1)).await.unwrap().to_native(), 2);
        // The same stuck instance with a non-idempotent call: reported, not repeated.
        r.set_instances([slow.addr]);
        let err = must("accumulate", r.accumulate(1)).await.unwrap_err();
        assert!(err.may_have_run(), "{err}");
        assert!(matches!(err.last(), Some(CallError::DeadlineExceeded)), "{err:?}");
    });
}

#[test]
fn no_instances_is_a_typed_error_and_instances_can_be_replaced_mid_flight() {
    each_driver(|kind| async move {
        let r = CalcRedirector::new([]);
        assert!(matches!(must("ping", r.ping()).await.unwrap_err(), RedirectError::NoInstances));
        let slow = Instance::start(kind, stuck);
        let good = Instance::start(kind, calculator("good"));
        r.set_instances([slow.addr]);
        let call = spawn({
            let r = r.clone();
            async move { r.add(20, 1).await.map(|v| v.to_native()) }
        });
        until("call in flight", || r.redirector().outstanding().iter().any(|&(_, n)| n == 1)).await;
        // The registry moves the service: new calls go to the new instance at once, while
        // the old call is still waiting where it was.
        r.set_instances([good.addr]);
        assert_eq!(must("whoami", r.whoami()).await.unwrap().as_str(), "good");
        slow.kill();
        // It was idempotent, and the new set has an untried instance: it fails over there.
        assert_eq!(must("old call", call).await.unwrap(), 21);
    });
}

#[test]
fn key_affinity_keeps_a_key_on_one_instance_for_every_client() {
    each_driver(|kind| async move {
        let instances: Vec<Instance> =
            ["a", "b", "c"].into_iter().map(|n| Instance::start(kind, calculator(n))).collect();
        let r = CalcRedirector::with_config(instances.iter().map(|i| i.addr), config(Policy::KeyAffinity));
        for k in 0..30 {
            must("set", r.set(format!("key{k}"), k)).await.unwrap();
        }
        // Every key is found where it was stored, from a second, independent redirector too.
        let other = CalcRedirector::with_config(instances.iter().map(|i| i.addr), config(Policy::KeyAffinity));
        for k in 0..30 {
            let v = must("get", other.get(format!("key{k}"))).await.unwrap();
            assert_eq!(v.as_ref().map(|v| v.to_native()), Some(k), "key{k}");
        }
    });
}
