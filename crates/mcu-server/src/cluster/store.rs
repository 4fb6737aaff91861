//! What the nodes share, in Redis, and nothing else: who holds each room, and each node's record.
//!
//! - `mcu:room:{room}` = the holder's node id, with an expiry (`ROOM_LEASE`) the holder renews.
//! - `mcu:node:{id}` = the node's record (JSON, placement.rs), with an expiry the node renews; a
//!   node whose record is gone is dead, and its rooms may be taken at once.
//! - `mcu:node:{id}:rooms` = the rooms it holds, scored by their lease's expiry, so a door counts
//!   and lists a node's rooms in one call.
//! - `mcu:nodes` = the ids of nodes that ever published (pruned when their record is gone).
//! - `mcu:room:{room}:recording` = set while the room records, so the node that reopens it after
//!   its node died records again (in a new file).
//!
//! Every change to a lease is one Lua script, atomic against every other node's. The scripts name
//! keys they compute (a node's room set), which a single Redis allows; Redis Cluster would not
//! (docs/deploy.md).

use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::Mutex;

/// Redis answers in well under a millisecond; a call that takes this long means it is gone, and
/// the node must not wait on it (a join would hang).
const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// Takes the room for `ARGV[2]` when nobody holds it, when `ARGV[2]` does, or when its holder's
/// record is gone (the holder died); renews it then. Answers the holder.
const CLAIM: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] and redis.call('EXISTS', 'mcu:node:' .. holder) == 1 then
  return holder
end
if holder and holder ~= ARGV[2] then
  redis.call('ZREM', 'mcu:node:' .. holder .. ':rooms', ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', 'mcu:node:' .. ARGV[2] .. ':rooms', now + tonumber(ARGV[3]), ARGV[1])
return ARGV[2]
"#;

/// Renews the lease if it is ours, and takes it again if it vanished (Redis restarted without
/// its data); answers the holder, so a node learns that another took its room.
const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then
  redis.call('ZREM', 'mcu:node:' .. ARGV[2] .. ':rooms', ARGV[1])
  return holder
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', 'mcu:node:' .. ARGV[2] .. ':rooms', now + tonumber(ARGV[3]), ARGV[1])
return ARGV[2]
"#;

/// Gives the room up, if it is ours.
const RELEASE: &str = r#"
redis.call('ZREM', 'mcu:node:' .. ARGV[2] .. ':rooms', ARGV[1])
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// A node's published record and the rooms whose leases it holds now.
#[derive(Debug, Clone)]
pub struct Published {
    pub record: String,
    pub rooms: Vec<String>,
}

pub struct Store {
    client: redis::Client,
    /// Made on first use and kept (it reconnects by itself); none while Redis has never been
    /// reachable, so a node starts even when Redis is not up yet.
    connection: Mutex<Option<ConnectionManager>>,
}

fn room_key(room: &str) -> String {
    format!("mcu:room:{room}")
}

fn node_key(node: &str) -> String {
    format!("mcu:node:{node}")
}

fn node_rooms_key(node: &str) -> String {
    format!("mcu:node:{node}:rooms")
}

fn recording_key(room: &str) -> String {
    format!("mcu:room:{room}:recording")
}

fn node_recordings_key(node: &str) -> String {
    format!("mcu:node:{node}:recordings")
}

const NODES_KEY: &str = "mcu:nodes";
/// Every node that ever published its recordings. Their lists outlive the nodes (the files are
/// still on their disks), so this set is not pruned with NODES_KEY.
const RECORDING_NODES_KEY: &str = "mcu:recording-nodes";

impl Store {
    pub fn new(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
        Ok(Store {
            client,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        let mut connection = self.connection.lock().await;
        if let Some(c) = connection.as_ref() {
            return Ok(c.clone());
        }
        let made = tokio::time::timeout(CALL_DEADLINE, ConnectionManager::new(self.client.clone()))
            .await
            .context("Redis did not answer")?
            .context("connecting to Redis")?;
        *connection = Some(made.clone());
        Ok(made)
    }

    /// Runs one call against Redis within `CALL_DEADLINE`.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let outcome = async {
            let connection = self.connection().await.with_context(|| what.to_string())?;
            tokio::time::timeout(CALL_DEADLINE, f(connection))
                .await
                .with_context(|| format!("{what}: Redis did not answer"))?
                .with_context(|| what.to_string())
        }
        .await;
        if outcome.is_err() {
            crate::metrics::metrics().cluster_registry_errors.inc();
        }
        outcome
    }

    /// Claims `room` for `node` (see CLAIM); answers the holder afterwards.
    pub async fn claim(&self, room: &str, node: &str, lease: Duration) -> Result<String> {
        self.call("claiming a room", |mut c| async move {
            Script::new(CLAIM)
                .key(room_key(room))
                .arg(room)
                .arg(node)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Renews `node`'s lease of `room` (see RENEW); answers the holder afterwards.
    pub async fn renew(&self, room: &str, node: &str, lease: Duration) -> Result<String> {
        self.call("renewing a room's lease", |mut c| async move {
            Script::new(RENEW)
                .key(room_key(room))
                .arg(room)
                .arg(node)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    pub async fn release(&self, room: &str, node: &str) -> Result<()> {
        self.call("releasing a room", |mut c| async move {
            Script::new(RELEASE)
                .key(room_key(room))
                .arg(room)
                .arg(node)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The node holding `room`, if any.
    pub async fn holder(&self, room: &str) -> Result<Option<String>> {
        self.call("looking a room up", |mut c| async move {
            redis::cmd("GET")
                .arg(room_key(room))
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Publishes `node`'s record for `ttl`, and keeps its room set as long.
    pub async fn publish(&self, node: &str, record: &str, ttl: Duration) -> Result<()> {
        self.call("publishing this node", |mut c| async move {
            let seconds = ttl.as_secs().max(1);
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(node_key(node))
                .arg(record)
                .arg("EX")
                .arg(seconds)
                .ignore()
                .cmd("SADD")
                .arg(NODES_KEY)
                .arg(node)
                .ignore()
                .cmd("EXPIRE")
                .arg(node_rooms_key(node))
                .arg(seconds * 6)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Takes `node`'s record away at once (a clean shutdown): its rooms are free for others.
    pub async fn withdraw(&self, node: &str) -> Result<()> {
        self.call("withdrawing this node", |mut c| async move {
            redis::pipe()
                .cmd("DEL")
                .arg(node_key(node))
                .ignore()
                .cmd("SREM")
                .arg(NODES_KEY)
                .arg(node)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Every live node's record, with the rooms whose leases it holds now. Nodes whose record
    /// expired are dropped from the set on the way.
    pub async fn nodes(&self) -> Result<Vec<Published>> {
        let ids: Vec<String> = self
            .call("listing nodes", |mut c| async move {
                redis::cmd("SMEMBERS")
                    .arg(NODES_KEY)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (now_s, now_us): (String, String) = self
            .call("reading Redis's clock", |mut c| async move {
                redis::cmd("TIME").query_async(&mut c).await
            })
            .await?;
        let now_ms =
            now_s.parse::<u64>().unwrap_or(0) * 1000 + now_us.parse::<u64>().unwrap_or(0) / 1000;
        let ids_for_call = ids.clone();
        let (records, rooms): (Vec<Option<String>>, Vec<Vec<String>>) = self
            .call("reading node records", |mut c| async move {
                let mut pipe = redis::pipe();
                let mut get = redis::cmd("MGET");
                for id in &ids_for_call {
                    get.arg(node_key(id));
                }
                pipe.add_command(get);
                let mut rooms = redis::pipe();
                for id in &ids_for_call {
                    rooms
                        .cmd("ZRANGEBYSCORE")
                        .arg(node_rooms_key(id))
                        .arg(now_ms)
                        .arg("+inf");
                }
                let records: Vec<Option<String>> =
                    pipe.query_async::<(Vec<Option<String>>,)>(&mut c).await?.0;
                let held: Vec<Vec<String>> = rooms.query_async(&mut c).await?;
                Ok((records, held))
            })
            .await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for ((id, record), rooms) in ids.into_iter().zip(records).zip(rooms) {
            match record {
                Some(record) => live.push(Published { record, rooms }),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _ = self
                .call("pruning dead nodes", |mut c| async move {
                    redis::cmd("SREM")
                        .arg(NODES_KEY)
                        .arg(&gone)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        }
        Ok(live)
    }

    /// Marks which of `rooms` are recording (for `ttl`) and which are not, so a room that
    /// reopens elsewhere knows whether to record.
    pub async fn mark_recording(&self, rooms: &[(String, bool)], ttl: Duration) -> Result<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        self.call("marking recordings", |mut c| async move {
            let mut pipe = redis::pipe();
            for (room, recording) in rooms {
                if *recording {
                    pipe.cmd("SET")
                        .arg(recording_key(room))
                        .arg(1)
                        .arg("EX")
                        .arg(ttl.as_secs().max(1))
                        .ignore();
                } else {
                    pipe.cmd("DEL").arg(recording_key(room)).ignore();
                }
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Whether `room` was recording on the node that held it last.
    pub async fn was_recording(&self, room: &str) -> Result<bool> {
        self.call("asking whether a room recorded", |mut c| async move {
            redis::cmd("EXISTS")
                .arg(recording_key(room))
                .query_async(&mut c)
                .await
        })
        .await
    }
    /// Replaces `node`'s published list of recordings with `list` (JSON).
    pub async fn publish_recordings(&self, node: &str, list: &str) -> Result<()> {
        self.call("publishing recordings", |mut c| async move {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(node_recordings_key(node))
                .arg(list)
                .ignore()
                .cmd("SADD")
                .arg(RECORDING_NODES_KEY)
                .arg(node)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Every node's published list of recordings, as (node id, JSON).
    pub async fn recordings(&self) -> Result<Vec<(String, String)>> {
        let ids: Vec<String> = self
            .call("listing nodes with recordings", |mut c| async move {
                redis::cmd("SMEMBERS")
                    .arg(RECORDING_NODES_KEY)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_recordings_key(id)).collect();
        let lists: Vec<Option<String>> = self
            .call("reading recordings", |mut c| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await?;
        Ok(ids
            .into_iter()
            .zip(lists)
            .filter_map(|(id, list)| Some((id, list?)))
            .collect())
    }
}
