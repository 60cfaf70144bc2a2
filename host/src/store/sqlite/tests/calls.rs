//! The async interface ([`AsyncContextStore`]): every call, on and off a
//! tokio runtime, inline and on blocking threads, and deadlines that have
//! already passed.

use super::*;
use crate::store::{AsyncContextStore, CallContext, Fence};
use std::future::Future;

/// A tokio runtime with two worker threads and a timer.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

pub(super) fn text(json: &str) -> JsonText {
    JsonText::from_stored(json.to_owned())
}

fn provenance() -> Provenance {
    Provenance {
        component_hash: "c".repeat(64),
        params_hash: "p".repeat(64),
        upstream_hash: "u".repeat(64),
        attempt: 2,
        host: "here".into(),
        started_at: 1,
        ended_at: 2,
    }
}

/// Every call of the async interface, under `cx`.
async fn every_call(store: &dyn AsyncContextStore, cx: &CallContext) -> (FlowRunId, NodeId) {
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let value = text("{\"n\":1.50}");
    store
        .put(cx, run, node, &value, Some(&provenance()))
        .await
        .unwrap();
    assert!(matches!(
        store.put(cx, run, node, &text("2"), None).await,
        Err(ContextStoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.get(cx, run, node).await.unwrap(), Some(value));
    assert_eq!(
        store.provenance(cx, run, node).await.unwrap(),
        Some(provenance())
    );
    assert_eq!(store.list_keys(cx, run).await.unwrap(), [node]);
    let plain = NodeId::new();
    store.put(cx, run, plain, &text("1"), None).await.unwrap();
    assert_eq!(store.provenance(cx, run, plain).await.unwrap(), None);
    store.put_global(cx, "g", &text("1")).await.unwrap();
    assert!(matches!(
        store.put_global(cx, "g", &text("2")).await,
        Err(ContextStoreError::GlobalAlreadyExists { .. })
    ));
    store.upsert_global(cx, "m", &text("1")).await.unwrap();
    store.upsert_global(cx, "m", &text("[2]")).await.unwrap();
    assert_eq!(store.get_global(cx, "m").await.unwrap(), Some(text("[2]")));
    assert_eq!(store.get_global(cx, "none").await.unwrap(), None);
    (run, node)
}

#[test]
fn the_store_is_its_own_async_store() {
    let (_dir, store) = temp_store();
    assert!(store.as_async().is_some());
    assert!(
        SqliteContextStore::in_memory()
            .unwrap()
            .as_async()
            .is_some()
    );
}

#[test]
fn every_async_call_works_on_and_off_the_executor_threads() {
    let rt = runtime();
    for may_block in [false, true] {
        let (_dir, store) = temp_store();
        let cx = CallContext::within(Duration::from_secs(60)).blocking(may_block);
        let (run, node) = rt.block_on(every_call(store.as_ref(), &cx));
        // The synchronous interface sees the same.
        assert_eq!(
            store.get_text(run, node).unwrap(),
            Some(text("{\"n\":1.50}"))
        );
        assert_eq!(
            ContextStore::provenance(store.as_ref(), run, node).unwrap(),
            Some(provenance())
        );
        let memory = SqliteContextStore::in_memory().unwrap();
        rt.block_on(every_call(&memory, &cx));
    }
}

#[test]
fn every_async_call_works_on_a_single_threaded_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (_dir, store) = temp_store();
    rt.block_on(every_call(store.as_ref(), &CallContext::none()));
}

/// Polls `future` once, with no runtime about: what an executor other than
/// tokio does. The store's calls do not wait on anything async there.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[test]
fn without_a_tokio_runtime_a_write_runs_inline() {
    let (_dir, store) = temp_store();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let cx = CallContext::within(Duration::from_secs(60));
    let value = text("7");
    let put = AsyncContextStore::put(store.as_ref(), &cx, run, node, &value, None);
    assert!(matches!(poll_once(put), Some(Ok(()))));
    assert_eq!(store.get_text(run, node).unwrap(), Some(text("7")));
}

#[test]
fn a_call_whose_deadline_has_passed_is_a_timeout_and_writes_nothing() {
    let rt = runtime();
    let (_dir, store) = temp_store();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    for may_block in [false, true] {
        let cx = CallContext::until(Instant::now()).blocking(may_block);
        let s: &dyn AsyncContextStore = store.as_ref();
        rt.block_on(async {
            let timeout =
                |r: &Result<(), ContextStoreError>| matches!(r, Err(ContextStoreError::Timeout(_)));
            assert!(timeout(&s.put(&cx, run, node, &text("1"), None).await));
            assert!(timeout(&s.put_global(&cx, "g", &text("1")).await));
            assert!(timeout(&s.upsert_global(&cx, "u", &text("1")).await));
            assert!(matches!(
                s.get(&cx, run, node).await,
                Err(ContextStoreError::Timeout(_))
            ));
            assert!(matches!(
                s.list_keys(&cx, run).await,
                Err(ContextStoreError::Timeout(_))
            ));
            assert!(matches!(
                s.get_global(&cx, "g").await,
                Err(ContextStoreError::Timeout(_))
            ));
            assert!(matches!(
                s.provenance(&cx, run, node).await,
                Err(ContextStoreError::Timeout(_))
            ));
        });
    }
    assert_eq!(store.get_text(run, node).unwrap(), None);
    assert_eq!(store.get_global_text("g").unwrap(), None);
    assert_eq!(store.get_global_text("u").unwrap(), None);
}

#[test]
fn a_fence_is_ignored() {
    let rt = runtime();
    let (_dir, store) = temp_store();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let stale = Fence {
        flow_run_id: run,
        node_id: node,
        token: -1,
    };
    let cx = CallContext::within(Duration::from_secs(60)).fenced(Some(stale));
    rt.block_on(AsyncContextStore::put(
        store.as_ref(),
        &cx,
        run,
        node,
        &text("1"),
        None,
    ))
    .unwrap();
    assert_eq!(store.get_text(run, node).unwrap(), Some(text("1")));
}

#[test]
fn a_read_only_store_refuses_async_writes() {
    let (dir, store) = temp_store();
    ContextStore::put_global(store.as_ref(), "k", &json!(1)).unwrap();
    drop(store);
    let store =
        SqliteContextStore::open_read_only(dir.path().join("ctx.db"), Default::default()).unwrap();
    let cx = CallContext::within(Duration::from_secs(60));
    let rt = runtime();
    let s: &dyn AsyncContextStore = &store;
    assert!(matches!(
        rt.block_on(s.put_global(&cx, "k2", &text("1"))),
        Err(ContextStoreError::StorageError(_))
    ));
    assert_eq!(
        rt.block_on(s.get_global(&cx, "k")).unwrap(),
        Some(text("1"))
    );
}
