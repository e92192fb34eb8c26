//! An instant-answer Elasticsearch for benchmarks (bench/es_ceiling.sh,
//! bench/index_lifecycle.sh): the part of the REST API tributary's sink, verify and
//! reindex use, in memory, answered as fast as the requests can be parsed. The
//! stand-in of the tests indexes 2-5k documents/s and sorts the whole index for every
//! search page, which bounds every figure measured through it far below a real
//! cluster; this server measures tributary's own ceiling instead.
//!
//! It keeps what the benchmarks check (every document with its external version,
//! deletes as versioned tombstones, indexes, aliases with their write index,
//! mappings), answers each bulk item with the status a cluster gives (201 created,
//! 200 updated or deleted, 404 deleting a missing document, 409 an older version), and
//! counts requests, bytes and items. Searches see every write at once (no refresh
//! interval); sorting is by the `_source` values of the sort fields (`x.keyword`
//! sorts by `x`). Not a search engine: queries other than `match_all` are refused.
//!
//!   cargo run --release --example instant_es -- [ADDR]   (default 127.0.0.1:19283)
//!
//! `GET /_instant/stats` gives the counters and the server's own CPU seconds;
//! `POST /_instant/reset` empties it. With `--latency-field NAME` it also measures,
//! for every document indexed, the time from the UTC date-time in its field NAME (a
//! writer's clock, such as `NOW(6)` in the row) to the document's arrival, and gives
//! its percentiles in the stats (`latency_ms`).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value as Json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Default)]
struct Store {
    indexes: BTreeMap<String, Index>,
    /// alias -> (index -> is the write index)
    aliases: BTreeMap<String, BTreeMap<String, bool>>,
    /// Arrival minus the latency field's time, in ms, of each document indexed.
    latency_ms: Vec<f64>,
    requests: u64,
    bulk_requests: u64,
    bulk_bytes: u64,
    items: u64,
}

#[derive(Default)]
struct Index {
    mappings: Json,
    docs: HashMap<String, Doc>,
    /// The live documents in the order of the last search's sort (dropped on a write).
    sorted: Option<(Vec<String>, Vec<Keyed>)>,
    seq_no: u64,
}

/// A document's sort values and its `_id`.
type Keyed = (Vec<Json>, String);

struct Doc {
    version: u64,
    /// None: deleted (a tombstone keeps its version, as the cluster does for a while).
    source: Option<Box<str>>,
}

type Shared = Arc<Mutex<Store>>;

/// The field whose date-time the arrival latency is measured from (`--latency-field`).
static LATENCY_FIELD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:19283".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--latency-field" => {
                let f = args.next().expect("--latency-field NAME");
                LATENCY_FIELD.set(format!("\"{f}\":\"")).expect("set once");
            }
            other => addr = other.to_string(),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        eprintln!("instant_es on http://{addr}");
        let store: Shared = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(handle(req, store).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn handle(req: Request<hyper::body::Incoming>, store: Shared) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, "parse_exception", &e.to_string()),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut s = store.lock().unwrap();
    s.requests += 1;
    let parts = parts.as_slice();
    match (&method, parts) {
        (&Method::GET, [""]) => ok(json!({
            "name": "instant_es", "cluster_name": "instant",
            "version": {"number": "8.15.0", "distribution": "instant_es"},
            "tagline": "You Know, for Search"
        })),
        (&Method::GET, ["_instant", "stats"]) => ok(s.stats()),
        (&Method::POST, ["_instant", "reset"]) => {
            *s = Store::default();
            ok(json!({"acknowledged": true}))
        }
        (m, ["_bulk"]) if m == Method::POST || m == Method::PUT => s.bulk(None, &body),
        (m, [t, "_bulk"]) if m == Method::POST || m == Method::PUT => s.bulk(Some(t), &body),
        (&Method::POST, ["_aliases"]) => s.update_aliases(&body),
        (&Method::HEAD, ["_alias", name]) => {
            let code = if s.aliases.get(*name).is_some_and(|m| !m.is_empty()) {
                200
            } else {
                404
            };
            respond(code, Bytes::new())
        }
        (&Method::GET, ["_alias", name]) => s.alias_by_name(name),
        (&Method::GET, [t, "_alias"]) => s.alias_by_index(t),
        (&Method::GET, [t, "_mapping"]) => s.get_mapping(t),
        (m, [t, "_mapping"]) if m == Method::PUT || m == Method::POST => s.put_mapping(t, &body),
        (_, [_, "_refresh"]) | (_, ["_refresh"]) => {
            ok(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}))
        }
        (&Method::PUT, [name]) => s.create(name, &body),
        (&Method::DELETE, [name]) => s.delete_indexes(name),
        (&Method::HEAD, [name]) => respond(
            if s.resolve(name).is_empty() { 404 } else { 200 },
            Bytes::new(),
        ),
        (_, [t, "_count"]) => {
            let names = s.resolve(t);
            if names.is_empty() {
                return missing(t);
            }
            let count: usize = names.iter().map(|n| s.indexes[n].live()).sum();
            ok(json!({"count": count, "_shards": {"total": 1, "successful": 1, "failed": 0}}))
        }
        (_, [t, "_mget"]) => s.mget(t, &body),
        (_, [t, "_search"]) => s.search(t, &body),
        _ => error(
            400,
            "illegal_argument_exception",
            &format!("instant_es does not answer {method} {path}"),
        ),
    }
}

impl Index {
    fn live(&self) -> usize {
        self.docs.values().filter(|d| d.source.is_some()).count()
    }
}

/// One bulk action line: `{"index": {"_index": ..., "_id": ..., "version": ...}}`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action<'a> {
    Index(#[serde(borrow)] Meta<'a>),
    Create(#[serde(borrow)] Meta<'a>),
    Update(#[serde(borrow)] Meta<'a>),
    Delete(#[serde(borrow)] Meta<'a>),
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "_index", borrow)]
    index: Option<Cow<'a, str>>,
    #[serde(rename = "_id", borrow)]
    id: Option<Cow<'a, str>>,
    version: Option<u64>,
    #[serde(borrow)]
    version_type: Option<Cow<'a, str>>,
}

/// What became of one bulk item.
enum Item {
    Written {
        index: String,
        id: String,
        version: u64,
        result: &'static str,
        status: u16,
        seq_no: u64,
    },
    Failed {
        index: String,
        id: String,
        status: u16,
        kind: &'static str,
        reason: String,
    },
}

impl Item {
    fn failed(
        index: &str,
        id: &str,
        status: u16,
        kind: &'static str,
        reason: impl Into<String>,
    ) -> Item {
        Item::Failed {
            index: index.into(),
            id: id.into(),
            status,
            kind,
            reason: reason.into(),
        }
    }

    fn status(&self) -> u16 {
        match self {
            Item::Written { status, .. } | Item::Failed { status, .. } => *status,
        }
    }

    /// The item as the cluster writes it, without building a JSON tree or going
    /// through `format!` (the endpoint must cost far less per item than the sink it
    /// measures).
    fn write(&self, op: &str, out: &mut Vec<u8>) {
        let str = |out: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(&mut *out, s).expect("writing to a Vec")
        };
        let num = |out: &mut Vec<u8>, n: u64| {
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
        };
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(b"\":{\"_index\":");
        match self {
            Item::Written {
                index,
                id,
                version,
                result,
                status,
                seq_no,
            } => {
                str(out, index);
                out.extend_from_slice(b",\"_id\":");
                str(out, id);
                out.extend_from_slice(b",\"_version\":");
                num(out, *version);
                out.extend_from_slice(b",\"result\":\"");
                out.extend_from_slice(result.as_bytes());
                out.extend_from_slice(
                    b"\",\"_shards\":{\"total\":2,\"successful\":1,\"failed\":0},\"_seq_no\":",
                );
                num(out, *seq_no);
                out.extend_from_slice(b",\"_primary_term\":1,\"status\":");
                num(out, u64::from(*status));
            }
            Item::Failed {
                index,
                id,
                status,
                kind,
                reason,
            } => {
                str(out, index);
                out.extend_from_slice(b",\"_id\":");
                str(out, id);
                out.extend_from_slice(b",\"status\":");
                num(out, u64::from(*status));
                out.extend_from_slice(b",\"error\":{\"type\":\"");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\",\"reason\":");
                str(out, reason);
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"}}");
    }
}

impl Store {
    fn stats(&self) -> Json {
        let indexes: serde_json::Map<String, Json> = self
            .indexes
            .iter()
            .map(|(n, i)| (n.clone(), json!({"documents": i.live()})))
            .collect();
        json!({
            "requests": self.requests,
            "bulk_requests": self.bulk_requests,
            "bulk_bytes": self.bulk_bytes,
            "items": self.items,
            "cpu_seconds": cpu_seconds(),
            "latency_ms": percentiles(&self.latency_ms),
            "indexes": indexes,
            "aliases": self.aliases,
        })
    }

    /// The concrete indexes a target names: an index, an alias, a `*` pattern, or a
    /// comma-separated list of those.
    fn resolve(&self, target: &str) -> Vec<String> {
        let mut out = Vec::new();
        for t in target.split(',') {
            if let Some(prefix) = t.strip_suffix('*') {
                out.extend(
                    self.indexes
                        .keys()
                        .filter(|n| n.starts_with(prefix))
                        .cloned(),
                );
            } else if self.indexes.contains_key(t) {
                out.push(t.to_string());
            } else if let Some(m) = self.aliases.get(t) {
                out.extend(m.keys().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Where a write to `target` goes: the index, or the alias's write index (its only
    /// index when none is marked); a new index is created as the cluster would.
    fn write_index(&mut self, target: &str) -> Result<String, String> {
        if self.indexes.contains_key(target) {
            return Ok(target.to_string());
        }
        if let Some(m) = self.aliases.get(target) {
            return match m.iter().find(|(_, w)| **w) {
                Some((i, _)) => Ok(i.clone()),
                None if m.len() == 1 => Ok(m.keys().next().unwrap().clone()),
                None => Err(format!("no write index is defined for alias [{target}]")),
            };
        }
        self.indexes.insert(target.to_string(), Index::default());
        Ok(target.to_string())
    }

    fn bulk(&mut self, default_index: Option<&str>, body: &[u8]) -> Response<Full<Bytes>> {
        self.bulk_requests += 1;
        self.bulk_bytes += body.len() as u64;
        let mut out = Vec::with_capacity(body.len() / 2 + 64);
        out.extend_from_slice(b"{\"took\":0,\"errors\":");
        let errors_at = out.len();
        out.extend_from_slice(b"false,\"items\":[");
        let mut errors = false;
        let mut lines = Lines { body, at: 0 };
        let mut first = true;
        while let Some(line) = lines.next() {
            let action: Action = match serde_json::from_slice(line) {
                Ok(a) => a,
                Err(e) => return error(400, "parse_exception", &format!("bulk action line: {e}")),
            };
            let (op, meta) = match action {
                Action::Index(m) => ("index", m),
                Action::Create(m) => ("create", m),
                Action::Update(m) => ("update", m),
                Action::Delete(m) => ("delete", m),
            };
            let source = match op {
                "delete" => None,
                _ => match lines.next() {
                    Some(s) => Some(s),
                    None => {
                        return error(
                            400,
                            "parse_exception",
                            "bulk action without its source line",
                        )
                    }
                },
            };
            self.items += 1;
            if !first {
                out.push(b',');
            }
            first = false;
            let item = self.apply(op, meta, default_index, source);
            errors |= item.status() >= 300;
            item.write(op, &mut out);
        }
        out.extend_from_slice(b"]}");
        if errors {
            out.splice(errors_at..errors_at + 5, b"true ".iter().copied());
        }
        respond(200, Bytes::from(out))
    }

    /// One bulk item, with the cluster's answer to it.
    fn apply(
        &mut self,
        op: &str,
        meta: Meta,
        default_index: Option<&str>,
        source: Option<&[u8]>,
    ) -> Item {
        let Some(target) = meta.index.as_deref().or(default_index) else {
            return Item::failed(
                "",
                "",
                400,
                "action_request_validation_exception",
                "index is missing",
            );
        };
        let index = match self.write_index(target) {
            Ok(i) => i,
            Err(reason) => {
                return Item::failed(target, "", 400, "illegal_argument_exception", reason)
            }
        };
        let Some(id) = meta.id.as_deref() else {
            return Item::failed(
                &index,
                "",
                400,
                "action_request_validation_exception",
                "instant_es needs an _id",
            );
        };
        if op == "update" {
            return Item::failed(
                &index,
                id,
                400,
                "illegal_argument_exception",
                "instant_es does not answer update actions",
            );
        }
        let version_type = meta.version_type.as_deref();
        let external = matches!(version_type, Some("external") | Some("external_gte"));
        let ix = self.indexes.get_mut(&index).expect("write_index made it");
        let current = ix.docs.get(id);
        let version = if external {
            let v = meta.version.unwrap_or(0);
            if let Some(c) = current {
                let refused = if version_type == Some("external_gte") {
                    v < c.version
                } else {
                    v <= c.version
                };
                if refused {
                    let reason = format!("[{id}]: version conflict, current version [{}] is higher or equal to the one provided [{v}]", c.version);
                    return Item::failed(
                        &index,
                        id,
                        409,
                        "version_conflict_engine_exception",
                        reason,
                    );
                }
            }
            v
        } else {
            current.map_or(1, |c| c.version + 1)
        };
        let existed = current.is_some_and(|c| c.source.is_some());
        if op == "create" && existed {
            return Item::failed(
                &index,
                id,
                409,
                "version_conflict_engine_exception",
                "document already exists",
            );
        }
        ix.seq_no += 1;
        ix.sorted = None;
        let seq_no = ix.seq_no;
        if let (Some(field), Some(s)) = (LATENCY_FIELD.get(), source) {
            if let Some(t) = field_time_ms(s, field) {
                self.latency_ms.push(now_ms() - t);
            }
        }
        let source = source.map(|s| match std::str::from_utf8(s) {
            Ok(t) => t.into(),
            Err(_) => String::from_utf8_lossy(s).into_owned().into_boxed_str(),
        });
        let (result, status) = match (&source, existed) {
            (Some(_), true) => ("updated", 200),
            (Some(_), false) => ("created", 201),
            (None, true) => ("deleted", 200),
            (None, false) => ("not_found", 404),
        };
        match ix.docs.get_mut(id) {
            Some(d) => *d = Doc { version, source },
            None => {
                ix.docs.insert(id.to_string(), Doc { version, source });
            }
        }
        Item::Written {
            index,
            id: id.to_string(),
            version,
            result,
            status,
            seq_no,
        }
    }

    fn create(&mut self, name: &str, body: &[u8]) -> Response<Full<Bytes>> {
        if self.indexes.contains_key(name) {
            return error(
                400,
                "resource_already_exists_exception",
                &format!("index [{name}] already exists"),
            );
        }
        let body: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let index = Index {
            mappings: body["mappings"].clone(),
            ..Index::default()
        };
        self.indexes.insert(name.to_string(), index);
        for (alias, a) in body["aliases"].as_object().into_iter().flatten() {
            let write = a["is_write_index"].as_bool().unwrap_or(false);
            self.aliases
                .entry(alias.clone())
                .or_default()
                .insert(name.to_string(), write);
        }
        ok(json!({"acknowledged": true, "shards_acknowledged": true, "index": name}))
    }

    fn delete_indexes(&mut self, target: &str) -> Response<Full<Bytes>> {
        let names: Vec<String> = target
            .split(',')
            .flat_map(|t| {
                if t.ends_with('*') {
                    self.resolve(t)
                } else if self.indexes.contains_key(t) {
                    vec![t.to_string()]
                } else {
                    Vec::new()
                }
            })
            .collect();
        if names.is_empty() {
            return missing(target);
        }
        for n in &names {
            self.indexes.remove(n);
            for m in self.aliases.values_mut() {
                m.remove(n);
            }
        }
        self.aliases.retain(|_, m| !m.is_empty());
        ok(json!({"acknowledged": true}))
    }

    fn update_aliases(&mut self, body: &[u8]) -> Response<Full<Bytes>> {
        let body: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let Some(actions) = body["actions"].as_array() else {
            return error(400, "action_request_validation_exception", "no actions");
        };
        // All or nothing, as the cluster applies them.
        for a in actions {
            for (kind, x) in a.as_object().into_iter().flatten() {
                let index = x["index"].as_str().unwrap_or_default();
                if !self.indexes.contains_key(index) {
                    return missing(index);
                }
                if kind == "remove" {
                    let alias = x["alias"].as_str().unwrap_or_default();
                    if !self
                        .aliases
                        .get(alias)
                        .is_some_and(|m| m.contains_key(index))
                    {
                        return error(
                            404,
                            "aliases_not_found_exception",
                            &format!("aliases [{alias}] missing"),
                        );
                    }
                }
            }
        }
        for a in actions {
            for (kind, x) in a.as_object().into_iter().flatten() {
                let index = x["index"].as_str().unwrap_or_default().to_string();
                let alias = x["alias"].as_str().unwrap_or_default().to_string();
                match kind.as_str() {
                    "add" => {
                        let write = x["is_write_index"].as_bool().unwrap_or(false);
                        let m = self.aliases.entry(alias).or_default();
                        if write {
                            m.values_mut().for_each(|w| *w = false);
                        }
                        m.insert(index, write);
                    }
                    "remove" => {
                        if let Some(m) = self.aliases.get_mut(&alias) {
                            m.remove(&index);
                        }
                    }
                    "remove_index" => {
                        self.indexes.remove(&index);
                        self.aliases.values_mut().for_each(|m| {
                            m.remove(&index);
                        });
                    }
                    other => {
                        return error(
                            400,
                            "illegal_argument_exception",
                            &format!("alias action [{other}]"),
                        )
                    }
                }
            }
        }
        self.aliases.retain(|_, m| !m.is_empty());
        ok(json!({"acknowledged": true}))
    }

    fn aliases_of(&self, index: &str) -> Json {
        let mut out = serde_json::Map::new();
        for (alias, m) in &self.aliases {
            if let Some(write) = m.get(index) {
                out.insert(
                    alias.clone(),
                    if *write {
                        json!({"is_write_index": true})
                    } else {
                        json!({})
                    },
                );
            }
        }
        Json::Object(out)
    }

    fn alias_by_name(&self, name: &str) -> Response<Full<Bytes>> {
        let Some(m) = self.aliases.get(name) else {
            return respond(
                404,
                Bytes::from(format!(
                    "{{\"error\":\"alias [{name}] missing\",\"status\":404}}"
                )),
            );
        };
        let out: serde_json::Map<String, Json> = m
            .iter()
            .map(|(i, w)| {
                let a = if *w {
                    json!({"is_write_index": true})
                } else {
                    json!({})
                };
                (i.clone(), json!({"aliases": {name: a}}))
            })
            .collect();
        ok(Json::Object(out))
    }

    fn alias_by_index(&self, target: &str) -> Response<Full<Bytes>> {
        let names = self.resolve(target);
        if names.is_empty() && !target.contains('*') {
            return missing(target);
        }
        let out: serde_json::Map<String, Json> = names
            .iter()
            .map(|i| (i.clone(), json!({"aliases": self.aliases_of(i)})))
            .collect();
        ok(Json::Object(out))
    }

    fn get_mapping(&self, target: &str) -> Response<Full<Bytes>> {
        let names = self.resolve(target);
        if names.is_empty() {
            return missing(target);
        }
        let out: serde_json::Map<String, Json> = names
            .iter()
            .map(|i| (i.clone(), json!({"mappings": self.indexes[i].mappings})))
            .collect();
        ok(Json::Object(out))
    }

    fn put_mapping(&mut self, target: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let names = self.resolve(target);
        if names.is_empty() {
            return missing(target);
        }
        let body: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        for n in names {
            let m = &mut self.indexes.get_mut(&n).unwrap().mappings;
            if !m.is_object() {
                *m = json!({});
            }
            for (k, v) in body.as_object().into_iter().flatten() {
                if k == "properties" {
                    if !m["properties"].is_object() {
                        m["properties"] = json!({});
                    }
                    for (f, t) in v.as_object().into_iter().flatten() {
                        m["properties"][f] = t.clone();
                    }
                } else {
                    m[k] = v.clone();
                }
            }
        }
        ok(json!({"acknowledged": true}))
    }

    fn mget(&self, target: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let names = self.resolve(target);
        let body: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let ids: Vec<String> = body["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                body["docs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| &d["_id"]),
            )
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect();
        let docs: Vec<Json> = ids
            .iter()
            .map(|id| {
                let found = names.iter().find_map(|n| {
                    let d = self.indexes[n].docs.get(id)?;
                    Some((n, d.version, d.source.as_deref()?))
                });
                match found {
                    Some((n, version, source)) => json!({
                        "_index": n, "_id": id, "_version": version, "found": true,
                        "_source": serde_json::from_str::<Json>(source).unwrap_or(Json::Null)
                    }),
                    None => json!({"_index": target, "_id": id, "found": false}),
                }
            })
            .collect();
        ok(json!({ "docs": docs }))
    }

    /// `match_all` pages in the order of `sort` (ascending fields), after
    /// `search_after`.
    fn search(&mut self, target: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let names = self.resolve(target);
        if names.is_empty() {
            return missing(target);
        }
        let body: Json = serde_json::from_slice(body).unwrap_or(json!({}));
        if !(body["query"].is_null() || body["query"].get("match_all").is_some()) {
            return error(
                400,
                "illegal_argument_exception",
                "instant_es answers match_all queries only",
            );
        }
        let size = body["size"].as_u64().unwrap_or(10) as usize;
        let mut fields = Vec::new();
        for s in body["sort"].as_array().into_iter().flatten() {
            let (f, order) = match s {
                Json::String(f) => (f.clone(), "asc"),
                Json::Object(o) => match o.iter().next() {
                    Some((f, v)) => (
                        f.clone(),
                        v.as_str().or(v["order"].as_str()).unwrap_or("asc"),
                    ),
                    None => continue,
                },
                _ => continue,
            };
            if order != "asc" {
                return error(
                    400,
                    "illegal_argument_exception",
                    "instant_es sorts ascending only",
                );
            }
            fields.push(f);
        }
        let mut hits = Vec::new();
        let mut total = 0;
        for n in &names {
            let ix = self.indexes.get_mut(n).unwrap();
            if ix.sorted.as_ref().is_none_or(|(f, _)| *f != fields) {
                ix.sorted = Some((fields.clone(), sorted(&ix.docs, &fields)));
            }
            let (_, order) = ix.sorted.as_ref().unwrap();
            total += order.len();
            let start = match body["search_after"].as_array() {
                Some(after) => {
                    order.partition_point(|(k, _)| compare(k, after) != Ordering::Greater)
                }
                None => 0,
            };
            for (key, id) in order[start..].iter().take(size) {
                let d = &ix.docs[id];
                hits.push((key.clone(), json!({
                    "_index": n, "_id": id, "_version": d.version, "_score": null,
                    "_source": serde_json::from_str::<Json>(d.source.as_deref().unwrap_or("null")).unwrap_or(Json::Null),
                    "sort": key
                })));
            }
        }
        hits.sort_by(|a, b| compare(&a.0, &b.0));
        hits.truncate(size);
        let hits: Vec<Json> = hits.into_iter().map(|(_, h)| h).collect();
        ok(json!({
            "took": 0, "timed_out": false,
            "_shards": {"total": 1, "successful": 1, "failed": 0, "skipped": 0},
            "hits": {"total": {"value": total, "relation": "eq"}, "max_score": null, "hits": hits}
        }))
    }
}

/// The live documents by their sort values (the `_id` last, as a tie breaker).
fn sorted(docs: &HashMap<String, Doc>, fields: &[String]) -> Vec<Keyed> {
    let mut out: Vec<Keyed> = docs
        .iter()
        .filter_map(|(id, d)| {
            let source: Json = serde_json::from_str(d.source.as_deref()?).ok()?;
            let key = fields
                .iter()
                .map(|f| match f.as_str() {
                    "_id" => Json::String(id.clone()),
                    f => source[f.strip_suffix(".keyword").unwrap_or(f)].clone(),
                })
                .collect();
            Some((key, id.clone()))
        })
        .collect();
    out.sort_by(|a, b| compare(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    out
}

/// Sort values in the cluster's order: numbers by value, strings by their bytes,
/// missing values last.
fn compare(a: &[Json], b: &[Json]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Json::Null, Json::Null) => Ordering::Equal,
            (Json::Null, _) => Ordering::Greater,
            (_, Json::Null) => Ordering::Less,
            (Json::Number(p), Json::Number(q)) => {
                match (p.as_i64(), q.as_i64(), p.as_u64(), q.as_u64()) {
                    (Some(p), Some(q), _, _) => p.cmp(&q),
                    (_, _, Some(p), Some(q)) => p.cmp(&q),
                    _ => p
                        .as_f64()
                        .partial_cmp(&q.as_f64())
                        .unwrap_or(Ordering::Equal),
                }
            }
            (Json::String(p), Json::String(q)) => p.as_bytes().cmp(q.as_bytes()),
            (p, q) => p.to_string().cmp(&q.to_string()),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The non-empty lines of a bulk body.
struct Lines<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        while self.at < self.body.len() {
            let rest = &self.body[self.at..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            self.at += end + 1;
            if end > 0 {
                return Some(&rest[..end]);
            }
        }
        None
    }
}

/// This process's user + system CPU seconds (/proc/self/stat, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the line; 12 and 13 counted after the command's ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn respond(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(body))
        .expect("a valid response")
}

fn ok(body: Json) -> Response<Full<Bytes>> {
    respond(200, Bytes::from(body.to_string()))
}

fn error(status: u16, kind: &str, reason: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status});
    respond(status, Bytes::from(body.to_string()))
}

fn missing(target: &str) -> Response<Full<Bytes>> {
    error(
        404,
        "index_not_found_exception",
        &format!("no such index [{target}]"),
    )
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The UTC date-time (`YYYY-MM-DDTHH:MM:SS[.ffffff]`, a `Z` or none) that follows
/// `"field":"` in a document, in ms since the epoch.
fn field_time_ms(source: &[u8], field: &str) -> Option<f64> {
    let at = memchr::memmem::find(source, field.as_bytes())? + field.len();
    let text = std::str::from_utf8(source.get(at..at + 19)?).ok()?;
    let n = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let mut ms = ((days * 24 + h) * 60 + mi) as f64 * 60_000.0 + s as f64 * 1000.0;
    let rest = &source[at + 19..];
    if rest.first() == Some(&b'.') {
        let digits: Vec<u8> = rest[1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .copied()
            .collect();
        let frac: f64 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
        ms += frac / 10f64.powi(digits.len() as i32) * 1000.0;
    }
    Some(ms)
}

/// count, p50, p99 and max of `samples`.
fn percentiles(samples: &[f64]) -> Json {
    if samples.is_empty() {
        return json!({"count": 0});
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    let q = |p: f64| (v[((v.len() - 1) as f64 * p).round() as usize] * 10.0).round() / 10.0;
    json!({"count": v.len(), "p50": q(0.5), "p99": q(0.99), "max": q(1.0)})
}
