//! Fuzzes the host side of the WIT boundary: sequences of guest store calls
//! (`put`, `get`, `list-keys`, `put-global`, `upsert-global`, `get-global`)
//! with arbitrary text for ids, keys and JSON, mixed with well-formed ids and
//! JSON so that every check is passed as well as failed, made by two
//! [`GuestStore`]s over one in-memory [`SqliteContextStore`]:
//!
//! - guest A: node A of the run, with node B as its declared upstream, the
//!   default grant (no globals at all, reads of its own node and B only),
//!   limits of 4096 bytes, 64 writes, depth 32;
//! - guest B: node B of the same run, no upstreams, may read the whole run,
//!   write globals under `w/` and read them under `w/` and `r/`, limits of
//!   256 bytes, 16 writes, depth 4.
//!
//! The host also writes outputs and globals directly (a third node, another
//! run, any key), so that denied reads would otherwise find something.
//!
//! Beside "no panic", every call is checked against a model of the contract:
//! - it answers `Ok` exactly when no check should refuse it, and otherwise a
//!   typed error whose kind is one of the refusals that apply (never
//!   `storage`);
//! - a refused write changes nothing (checked with a direct read of the
//!   target through [`ContextStore`]);
//! - an `Ok` write reads back equal (both texts parsed with `serde_json`);
//! - `writes()` counts every write call, refused ones included, and never
//!   exceeds `max_writes`; `reads()` counts every read call likewise;
//! - at the end, every output, every `list_keys` and every global touched
//!   agrees with the model.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use arbitrary::Arbitrary;
use contextstore::grant::RESERVED_PREFIX;
use contextstore::guest_store::{GuestResult, GuestStore};

/// Drives one guest call to its end (the guest store's calls are async).
fn wait<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(call)
}
use contextstore::{
    ContextStore, ContextStoreError, FlowRunId, Grant, Limits, NodeId, SqliteContextStore,
};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

const RUN: &str = "6f9619ff-8b86-4d01-b42d-00cf4fc964ff";
const OTHER_RUN: &str = "0d4c4a9e-1d2b-4c3a-9a55-7e1f2c3b4a5d";
/// Guest A's node, guest B's node, and a node nobody runs as.
const NODES: [&str; 3] = [
    "00000000-0000-4000-8000-00000000000a",
    "00000000-0000-4000-8000-00000000000b",
    "00000000-0000-4000-8000-00000000000c",
];
const KEY_POOL: [&str; 11] = [
    "", "w", "w/", "w/a", "w/b", "r/", "r/a", "W/a", "x", "w/\u{0}", "r/\u{0}x",
];
/// Most calls made for one input, repetitions included.
const MAX_CALLS: usize = 512;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    A,
    B,
}

#[derive(Arbitrary, Debug)]
enum RunText {
    Own,
    Other,
    OwnUpperCase,
    OwnBraced,
    OwnSimple,
    Raw(String),
}

impl RunText {
    fn render(&self) -> String {
        match self {
            Self::Own => RUN.to_owned(),
            Self::Other => OTHER_RUN.to_owned(),
            Self::OwnUpperCase => RUN.to_uppercase(),
            Self::OwnBraced => format!("{{{RUN}}}"),
            Self::OwnSimple => RUN.replace('-', ""),
            Self::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum NodeText {
    Caller,
    Node(u8),
    CallerUpperCase,
    CallerPadded,
    Raw(String),
}

impl NodeText {
    fn render(&self, caller: &str) -> String {
        match self {
            Self::Caller => caller.to_owned(),
            Self::Node(i) => NODES[usize::from(*i) % NODES.len()].to_owned(),
            Self::CallerUpperCase => caller.to_uppercase(),
            Self::CallerPadded => format!("{caller} "),
            Self::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum KeyText {
    Pool(u8),
    Writable(String),
    Readable(String),
    /// Under the host's reserved prefix: refused whatever the grant.
    Reserved(String),
    Raw(String),
}

impl KeyText {
    fn render(&self) -> String {
        match self {
            Self::Pool(i) => KEY_POOL[usize::from(*i) % KEY_POOL.len()].to_owned(),
            Self::Writable(s) => format!("w/{s}"),
            Self::Readable(s) => format!("r/{s}"),
            Self::Reserved(s) => format!("{RESERVED_PREFIX}{s}"),
            Self::Raw(s) => s.clone(),
        }
    }
}

/// A JSON document, mostly well-formed.
#[derive(Arbitrary, Debug)]
enum Gen {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// A run of digits: long integers, leading zeros.
    Digits(bool, Vec<u8>),
    Str(String),
    /// A string written with `\uXXXX` escapes only.
    Escaped(String),
    Array(Vec<Gen>),
    Object(Vec<(String, Gen)>),
}

impl Gen {
    fn render(&self, pad: bool, out: &mut String) {
        let space = if pad { " \n\t" } else { "" };
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => write!(out, "{i}").unwrap(),
            Self::UInt(u) => write!(out, "{u}").unwrap(),
            Self::Float(f) if f.is_finite() => write!(out, "{f:?}").unwrap(),
            // Out of range for an f64: not accepted as JSON.
            Self::Float(_) => out.push_str("1e999"),
            Self::Digits(negative, digits) => {
                if *negative {
                    out.push('-');
                }
                if digits.is_empty() {
                    out.push('0');
                }
                for d in digits.iter().take(400) {
                    out.push(char::from(b'0' + d % 10));
                }
            }
            Self::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Self::Escaped(s) => {
                out.push('"');
                for unit in s.encode_utf16() {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
                out.push('"');
            }
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    item.render(pad, out);
                }
                out.push_str(space);
                out.push(']');
            }
            Self::Object(entries) => {
                out.push('{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    out.push_str(&serde_json::to_string(key).unwrap());
                    out.push_str(space);
                    out.push(':');
                    item.render(pad, out);
                }
                out.push_str(space);
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        self.render(false, &mut out);
        out
    }
}

/// The text a guest passes as a value.
#[derive(Arbitrary, Debug)]
enum JsonText {
    Gen(Gen),
    Padded(Gen),
    /// Nested `depth % 48` levels deep (both limits, 4 and 32, lie inside).
    Deep {
        depth: u8,
        objects: bool,
        inner: Gen,
    },
    Unclosed(u8),
    /// A string of `chunks * 64` bytes: around both size limits.
    Big(u8),
    Truncated(Gen, u16),
    Trailing(Gen, String),
    Raw(String),
}

impl JsonText {
    fn render(&self) -> String {
        match self {
            Self::Gen(g) => g.text(),
            Self::Padded(g) => {
                let mut out = String::from(" ");
                g.render(true, &mut out);
                out.push('\n');
                out
            }
            Self::Deep {
                depth,
                objects,
                inner,
            } => {
                let depth = usize::from(*depth) % 48;
                let (open, close) = if *objects {
                    ("{\"k\":", "}")
                } else {
                    ("[", "]")
                };
                format!(
                    "{}{}{}",
                    open.repeat(depth),
                    inner.text(),
                    close.repeat(depth)
                )
            }
            Self::Unclosed(depth) => "[".repeat(usize::from(*depth)),
            Self::Big(chunks) => format!("\"{}\"", "x".repeat(usize::from(*chunks) * 64)),
            Self::Truncated(g, at) => {
                let mut text = g.text();
                let mut at = usize::from(*at) % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
                text
            }
            Self::Trailing(g, junk) => format!("{}{junk}", g.text()),
            Self::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Call {
    Put(Who, RunText, NodeText, JsonText),
    Get(Who, RunText, NodeText),
    ListKeys(Who, RunText),
    PutGlobal(Who, KeyText, JsonText),
    UpsertGlobal(Who, KeyText, JsonText),
    GetGlobal(Who, KeyText),
    /// The host writes an output directly: own or other run, any of the three nodes.
    HostPut(bool, u8, Gen),
    /// The host writes a global directly.
    HostPutGlobal(KeyText, Gen),
    /// The call, `1 + n % 80` times: reaches the write limits with short inputs.
    Repeat(u8, Box<Call>),
}

/// Parses JSON text at any depth: the oracle's parser, not the store's.
fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The nesting of arrays and objects in a JSON document, as written: a
/// scalar is 0, `[]` is 1, `[[1]]` is 2. Containers that parsing into a
/// [`Value`] would drop (the earlier values of a duplicated object key)
/// count too: the limit is on the text the guest sent.
struct Depth(usize);

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Depth;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_str<E>(self, _: &str) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_unit<E>(self) -> Result<Depth, E> {
                Ok(Depth(0))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Depth, A::Error> {
                let mut deepest = 0;
                while let Some(Depth(d)) = seq.next_element()? {
                    deepest = deepest.max(d);
                }
                Ok(Depth(deepest + 1))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Depth, A::Error> {
                let mut deepest = 0;
                while let Some((serde::de::IgnoredAny, Depth(d))) = map.next_entry()? {
                    deepest = deepest.max(d);
                }
                Ok(Depth(deepest + 1))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// The nesting depth of valid JSON text; `None` if it is not JSON.
fn text_depth(text: &str) -> Option<usize> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let Depth(depth) = Depth::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(depth)
}

/// Kinds of refusal (WIT names) that apply to a call.
type Refusals = Vec<&'static str>;

/// Checks a call's result against the refusals that apply: `Ok` exactly when
/// none does, otherwise an error of one of those kinds.
fn expect<T: std::fmt::Debug>(call: &str, result: &GuestResult<T>, refusals: &Refusals) {
    match result {
        Ok(value) => assert!(
            refusals.is_empty(),
            "{call}: answered Ok({value:?}) but should be refused with one of {refusals:?}"
        ),
        Err(error) => {
            let message = error.to_string();
            assert!(
                refusals.contains(&error.kind()),
                "{call}: refused with {} ({message}) but expected {}",
                error.kind(),
                if refusals.is_empty() {
                    "Ok".to_owned()
                } else {
                    format!("one of {refusals:?}")
                }
            );
        }
    }
}

struct Guest {
    store: GuestStore,
    run: FlowRunId,
    node: NodeId,
    node_text: &'static str,
    read_prefixes: &'static [&'static str],
    write_prefixes: &'static [&'static str],
    limits: Limits,
    /// What `writes()` must say.
    writes: u32,
    /// Its declared upstream, if any.
    upstream: Option<NodeId>,
    /// Whether its grant widens reads to the whole run.
    read_run: bool,
    /// What `reads()` must say.
    reads: u32,
}

impl Guest {
    /// Whether a `get` or `list-keys` of this guest's own run reaches `node`.
    fn may_read_node(&self, node: NodeId) -> bool {
        self.read_run || node == self.node || self.upstream == Some(node)
    }

    /// Every read call counts, refused ones included (the limit is far
    /// above what one input makes).
    fn count_read(&mut self, call: &str) {
        self.reads += 1;
        assert_eq!(
            self.store.reads(),
            self.reads,
            "{call}: reads() disagrees with the number of read calls"
        );
    }

    fn may_read(&self, key: &str) -> bool {
        !key.starts_with(RESERVED_PREFIX) && self.read_prefixes.iter().any(|p| key.starts_with(p))
    }

    fn may_write(&self, key: &str) -> bool {
        !key.starts_with(RESERVED_PREFIX) && self.write_prefixes.iter().any(|p| key.starts_with(p))
    }

    /// A key longer than the limit is refused before the grant is asked.
    fn key_refusals(&self, key: &str, refusals: &mut Refusals) -> bool {
        if key.len() > self.limits.max_key_bytes {
            refusals.push("quota-exceeded");
            return false;
        }
        true
    }

    /// Every write call counts, refused ones included, up to the limit.
    fn count_write(&mut self, refusals: &mut Refusals) {
        if self.writes >= self.limits.max_writes {
            refusals.push("quota-exceeded");
        } else {
            self.writes += 1;
        }
    }

    fn check_writes(&self, call: &str) {
        let writes = self.store.writes();
        assert!(
            writes <= self.limits.max_writes,
            "{call}: writes() = {writes} exceeds max_writes {}",
            self.limits.max_writes
        );
        assert_eq!(
            writes, self.writes,
            "{call}: writes() disagrees with the number of write calls"
        );
    }

    /// The refusals a value text earns; the parsed value if it earns none.
    fn check_value(&self, text: &str, refusals: &mut Refusals) -> Option<Value> {
        let mut fine = true;
        if text.len() > self.limits.max_value_bytes {
            refusals.push("quota-exceeded");
            fine = false;
        }
        match (parse(text), text_depth(text)) {
            (Ok(value), Some(depth)) if depth <= self.limits.max_json_depth => {
                fine.then_some(value)
            }
            _ => {
                refusals.push("invalid-json");
                None
            }
        }
    }
}

struct World {
    store: Arc<SqliteContextStore>,
    guests: [Guest; 2],
    outputs: HashMap<(FlowRunId, NodeId), Value>,
    globals: HashMap<String, Value>,
    runs: BTreeSet<FlowRunId>,
    keys: BTreeSet<String>,
    /// Calls left for this input.
    budget: usize,
}

impl World {
    fn new() -> Self {
        let store = Arc::new(SqliteContextStore::in_memory().expect("in-memory store"));
        let run: FlowRunId = RUN.parse().unwrap();
        let guest = |node_text: &'static str,
                     upstream: Option<&'static str>,
                     grant: Grant,
                     read_prefixes: &'static [&'static str],
                     write_prefixes: &'static [&'static str],
                     limits: Limits| {
            let node: NodeId = node_text.parse().unwrap();
            let upstream: Option<NodeId> = upstream.map(|u| u.parse().unwrap());
            let shared: Arc<dyn ContextStore> = store.clone();
            let read_run = grant.read_run;
            Guest {
                store: GuestStore::new(
                    contextstore::store::to_async(shared.clone()),
                    contextstore::store::CallContext::none(),
                    run,
                    node,
                    grant,
                    limits.clone(),
                )
                .with_upstreams(upstream),
                run,
                node,
                node_text,
                read_prefixes,
                write_prefixes,
                limits,
                writes: 0,
                upstream,
                read_run,
                reads: 0,
            }
        };
        let a = guest(
            NODES[0],
            Some(NODES[1]),
            Grant::default(),
            &[],
            &[],
            Limits {
                max_value_bytes: 4096,
                max_writes: 64,
                max_json_depth: 32,
                ..Limits::default()
            },
        );
        let b = guest(
            NODES[1],
            None,
            Grant::default()
                .read_whole_run()
                .write_globals("w/")
                .read_globals("w/")
                .read_globals("r/"),
            &["w/", "r/"],
            &["w/"],
            Limits {
                max_value_bytes: 256,
                max_key_bytes: 24,
                max_writes: 16,
                max_json_depth: 4,
                ..Limits::default()
            },
        );
        Self {
            store,
            guests: [a, b],
            outputs: HashMap::new(),
            globals: HashMap::new(),
            runs: [run, OTHER_RUN.parse().unwrap()].into(),
            keys: BTreeSet::new(),
            budget: MAX_CALLS,
        }
    }

    fn guest(&mut self, who: Who) -> &mut Guest {
        &mut self.guests[who as usize]
    }

    /// The store holds exactly what the model holds for this pair.
    fn check_output(&self, call: &str, run: FlowRunId, node: NodeId) {
        assert_eq!(
            self.store.get(run, node).expect("direct get"),
            self.outputs.get(&(run, node)).cloned(),
            "{call}: stored output of ({run}, {node}) disagrees with the model"
        );
    }

    fn check_global(&self, call: &str, key: &str) {
        assert_eq!(
            self.store.get_global(key).expect("direct get_global"),
            self.globals.get(key).cloned(),
            "{call}: stored global {key:?} disagrees with the model"
        );
    }

    fn apply(&mut self, call: &Call) {
        if self.budget == 0 {
            return;
        }
        if let Call::Repeat(n, inner) = call {
            for _ in 0..=(n % 80) {
                self.apply(inner);
            }
            return;
        }
        self.budget -= 1;
        match call {
            Call::Put(who, run, node, json) => self.put(*who, run, node, json),
            Call::Get(who, run, node) => self.get(*who, run, node),
            Call::ListKeys(who, run) => self.list_keys(*who, run),
            Call::PutGlobal(who, key, json) => self.write_global(*who, key, json, false),
            Call::UpsertGlobal(who, key, json) => self.write_global(*who, key, json, true),
            Call::GetGlobal(who, key) => self.get_global(*who, key),
            Call::HostPut(other_run, node, value) => self.host_put(*other_run, *node, value),
            Call::HostPutGlobal(key, value) => self.host_put_global(key, value),
            Call::Repeat(..) => unreachable!("expanded above"),
        }
    }

    fn put(&mut self, who: Who, run: &RunText, node: &NodeText, json: &JsonText) {
        let caller = self.guest(who).node_text;
        let (run_text, node_text, text) = (run.render(), node.render(caller), json.render());
        let call = format!("{who:?}.put({run_text:?}, {node_text:?}, {text:?})");
        let (run, node) = (run_text.parse().ok(), node_text.parse().ok());
        let mut refusals = Refusals::new();
        let exists = match (run, node) {
            (Some(r), Some(n)) => self.outputs.contains_key(&(r, n)),
            _ => false,
        };
        let guest = self.guest(who);
        guest.count_write(&mut refusals);
        match (run, node) {
            (Some(r), Some(n)) if r != guest.run || n != guest.node => {
                refusals.push("access-denied");
            }
            (Some(_), Some(_)) => {
                if exists {
                    refusals.push("already-exists");
                }
            }
            _ => refusals.push("invalid-id"),
        }
        let value = guest.check_value(&text, &mut refusals);
        let result = wait(guest.store.put(&run_text, &node_text, &text));
        expect(&call, &result, &refusals);
        guest.check_writes(&call);
        let (own_run, own_node) = (guest.run, guest.node);
        if result.is_ok() {
            let value = value.expect("an accepted value parses");
            // Read back through the guest, as text.
            let back = wait(guest.store.get(RUN, caller))
                .unwrap_or_else(|e| panic!("{call}: reading back: {e}"))
                .unwrap_or_else(|| panic!("{call}: Ok, but nothing to read back"));
            guest.count_read(&call);
            let back = parse(&back)
                .unwrap_or_else(|e| panic!("{call}: read back {back:?}, not JSON: {e}"));
            assert_eq!(back, value, "{call}: read back a different value");
            self.outputs.insert((own_run, own_node), value);
        }
        if let (Some(r), Some(n)) = (run, node) {
            self.runs.insert(r);
            self.check_output(&call, r, n);
        }
    }

    fn get(&mut self, who: Who, run: &RunText, node: &NodeText) {
        let caller = self.guest(who).node_text;
        let (run_text, node_text) = (run.render(), node.render(caller));
        let call = format!("{who:?}.get({run_text:?}, {node_text:?})");
        let (run, node) = (run_text.parse().ok(), node_text.parse().ok());
        let mut refusals = Refusals::new();
        let guest = &mut self.guests[who as usize];
        match (run, node) {
            (Some(r), Some(_)) if r != guest.run => refusals.push("access-denied"),
            (Some(_), Some(n)) if !guest.may_read_node(n) => refusals.push("access-denied"),
            (Some(_), Some(_)) => {}
            _ => refusals.push("invalid-id"),
        }
        let result = wait(guest.store.get(&run_text, &node_text));
        guest.count_read(&call);
        expect(&call, &result, &refusals);
        if let (Ok(text), Some(r), Some(n)) = (&result, run, node) {
            let got = text.as_deref().map(|t| {
                parse(t).unwrap_or_else(|e| panic!("{call}: answered {t:?}, not JSON: {e}"))
            });
            assert_eq!(
                got.as_ref(),
                self.outputs.get(&(r, n)),
                "{call}: wrong value"
            );
        }
    }

    fn list_keys(&mut self, who: Who, run: &RunText) {
        let run_text = run.render();
        let call = format!("{who:?}.list_keys({run_text:?})");
        let run: Option<FlowRunId> = run_text.parse().ok();
        let mut refusals = Refusals::new();
        let guest = &mut self.guests[who as usize];
        match run {
            Some(r) if r != guest.run => refusals.push("access-denied"),
            Some(_) => {}
            None => refusals.push("invalid-id"),
        }
        let result = wait(guest.store.list_keys(&run_text));
        guest.count_read(&call);
        expect(&call, &result, &refusals);
        if let (Ok(texts), Some(r)) = (&result, run) {
            let mut got: Vec<NodeId> = texts
                .iter()
                .map(|t| {
                    let id: NodeId = t
                        .parse()
                        .unwrap_or_else(|e| panic!("{call}: answered {t:?}, not an id: {e}"));
                    assert_eq!(&id.to_string(), t, "{call}: id not in canonical form");
                    id
                })
                .collect();
            got.sort();
            let mut expected: Vec<NodeId> = self
                .outputs
                .keys()
                .filter(|(run, node)| *run == r && guest.may_read_node(*node))
                .map(|(_, node)| *node)
                .collect();
            expected.sort();
            assert_eq!(got, expected, "{call}: wrong keys");
        }
    }

    fn write_global(&mut self, who: Who, key: &KeyText, json: &JsonText, upsert: bool) {
        let (key, text) = (key.render(), json.render());
        let name = if upsert {
            "upsert_global"
        } else {
            "put_global"
        };
        let call = format!("{who:?}.{name}({key:?}, {text:?})");
        let exists = self.globals.contains_key(&key);
        let mut refusals = Refusals::new();
        let guest = &mut self.guests[who as usize];
        guest.count_write(&mut refusals);
        if guest.key_refusals(&key, &mut refusals) {
            if !guest.may_write(&key) {
                refusals.push("access-denied");
            } else if exists && !upsert {
                refusals.push("global-already-exists");
            }
        }
        let value = guest.check_value(&text, &mut refusals);
        let result = if upsert {
            wait(guest.store.upsert_global(&key, &text))
        } else {
            wait(guest.store.put_global(&key, &text))
        };
        expect(&call, &result, &refusals);
        guest.check_writes(&call);
        if result.is_ok() {
            let value = value.expect("an accepted value parses");
            if guest.may_read(&key) {
                let back = wait(guest.store.get_global(&key))
                    .unwrap_or_else(|e| panic!("{call}: reading back: {e}"))
                    .unwrap_or_else(|| panic!("{call}: Ok, but nothing to read back"));
                guest.count_read(&call);
                assert_eq!(
                    back, text,
                    "{call}: the text did not come back byte for byte"
                );
                let back = parse(&back)
                    .unwrap_or_else(|e| panic!("{call}: read back {back:?}, not JSON: {e}"));
                assert_eq!(back, value, "{call}: read back a different value");
            }
            self.globals.insert(key.clone(), value);
        }
        self.check_global(&call, &key);
        self.keys.insert(key);
    }

    fn get_global(&mut self, who: Who, key: &KeyText) {
        let key = key.render();
        let call = format!("{who:?}.get_global({key:?})");
        let mut refusals = Refusals::new();
        let guest = &mut self.guests[who as usize];
        if guest.key_refusals(&key, &mut refusals) && !guest.may_read(&key) {
            refusals.push("access-denied");
        }
        let result = wait(guest.store.get_global(&key));
        guest.count_read(&call);
        expect(&call, &result, &refusals);
        if let Ok(text) = &result {
            let got = text.as_deref().map(|t| {
                parse(t).unwrap_or_else(|e| panic!("{call}: answered {t:?}, not JSON: {e}"))
            });
            assert_eq!(got.as_ref(), self.globals.get(&key), "{call}: wrong value");
        }
        self.keys.insert(key);
    }

    fn host_put(&mut self, other_run: bool, node: u8, value: &Gen) {
        let run: FlowRunId = if other_run { OTHER_RUN } else { RUN }.parse().unwrap();
        let node: NodeId = NODES[usize::from(node) % NODES.len()].parse().unwrap();
        let Ok(value) = parse(&value.text()) else {
            return;
        };
        let call = format!("host put({run}, {node}, {value})");
        match self.store.put(run, node, &value) {
            Ok(()) => {
                assert!(
                    !self.outputs.contains_key(&(run, node)),
                    "{call}: second put accepted"
                );
                self.outputs.insert((run, node), value);
            }
            Err(ContextStoreError::AlreadyExists {
                flow_run_id,
                node_id,
            }) => {
                assert!(
                    self.outputs.contains_key(&(run, node)),
                    "{call}: AlreadyExists for nothing"
                );
                assert_eq!(
                    (flow_run_id, node_id),
                    (run, node),
                    "{call}: wrong ids in the error"
                );
            }
            Err(e) => panic!("{call}: {e}"),
        }
        self.check_output(&call, run, node);
    }

    fn host_put_global(&mut self, key: &KeyText, value: &Gen) {
        let key = key.render();
        let Ok(value) = parse(&value.text()) else {
            return;
        };
        let call = format!("host put_global({key:?}, {value})");
        match self.store.put_global(&key, &value) {
            Ok(()) => {
                assert!(
                    !self.globals.contains_key(&key),
                    "{call}: second put accepted"
                );
                self.globals.insert(key.clone(), value);
            }
            Err(ContextStoreError::GlobalAlreadyExists { key: named }) => {
                assert!(
                    self.globals.contains_key(&key),
                    "{call}: GlobalAlreadyExists for nothing"
                );
                assert_eq!(named, key, "{call}: wrong key in the error");
            }
            Err(e) => panic!("{call}: {e}"),
        }
        self.check_global(&call, &key);
        self.keys.insert(key);
    }

    /// The whole store against the model.
    fn check_all(&self) {
        for &run in &self.runs {
            let mut got = self.store.list_keys(run).expect("direct list_keys");
            got.sort();
            let mut expected: Vec<NodeId> = self
                .outputs
                .keys()
                .filter(|(r, _)| *r == run)
                .map(|(_, node)| *node)
                .collect();
            expected.sort();
            assert_eq!(got, expected, "final list_keys({run})");
        }
        for &(run, node) in self.outputs.keys() {
            self.check_output("final", run, node);
        }
        for key in &self.keys {
            self.check_global("final", key);
        }
    }
}

fuzz_target!(|calls: Vec<Call>| {
    let mut world = World::new();
    for call in &calls {
        world.apply(call);
    }
    world.check_all();
});
