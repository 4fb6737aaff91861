//! Several nodes, one Redis (issue 18): a real redis-server on a free loopback port and three
//! `mcu serve` nodes on loopback, with synthetic participants entering through any node.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{init, settle, Server};
use mcu_probe::probe::{spec_for, Crowd};
use mcu_server::cluster::store::Store;
use mcu_server::codec::VideoCodec;

/// The bound for a dead node's rooms to be back, participants in them.
const BACK_WITHIN: Duration = Duration::from_secs(20);

/// Three nodes a, b, c sharing `redis`. Limits that count per address are off: every test
/// participant comes from 127.0.0.1.
fn three_nodes(test: &str, redis: &Redis) -> Vec<Server> {
    ["a", "b", "c"]
        .iter()
        .map(|id| cluster_node(test, redis, id, &["--max-new-rooms-per-address", "0"]))
        .collect()
}

/// Node `id` of the cluster on `redis`, with no limit of rooms or connections, and `extra` flags.
fn cluster_node(test: &str, redis: &Redis, id: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--redis-url",
        &redis.url,
        "--node-id",
        id,
        "--max-rooms",
        "0",
        "--max-connections-per-address",
        "0",
    ];
    args.extend_from_slice(extra);
    Server::start(&format!("{test}-{id}"), &args)
}

/// Which node holds `room`, as the cluster listing of `door` says.
async fn holder(door: &Server, room: &str) -> Option<String> {
    let rooms = door.rooms().await;
    rooms["cluster"]["rooms"]
        .as_array()?
        .iter()
        .find(|r| r["room"] == room)
        .and_then(|r| r["node"].as_str().map(str::to_string))
}

/// Waits until every node has published (a door places rooms only on nodes it has heard of).
async fn until_all_published(door: &Server, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = door.rooms().await;
        let seen = rooms["cluster"]["nodes"].as_array().map_or(0, Vec::len);
        if seen == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "only {seen} of {n} nodes published: {rooms:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of node `id` in `three_nodes`'s list.
/// The value of the unlabelled series `name` in the node's /metrics.
async fn metric(node: &Server, name: &str) -> Option<u64> {
    let text =
        String::from_utf8_lossy(&node.request("GET", "/metrics", &[]).await.body).into_owned();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn index_of(id: &str) -> usize {
    ["a", "b", "c"]
        .iter()
        .position(|n| *n == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn node<'a>(nodes: &'a [Server], id: &str) -> &'a Server {
    &nodes[index_of(id)]
}

/// Two participants in "standup", entering through node a and seeing each other; with the id
/// of the node that holds the room.
async fn room_of_two(nodes: &[Server], what: &str) -> (Crowd, String) {
    let mut crowd = Crowd::new(&nodes[0].url(), "standup").expect("a crowd");
    for _ in 0..2 {
        crowd.join(VideoCodec::Vp8).await.expect("joining");
    }
    settle(&crowd, what).await;
    let home = holder(&nodes[0], "standup")
        .await
        .expect("the room is listed");
    (crowd, home)
}

#[tokio::test]
async fn a_lease_has_one_holder_and_a_dead_holders_rooms_are_free_at_once() {
    let mut redis = Redis::start();
    let store = Store::new(&redis.url).expect("a store");
    let lease = Duration::from_secs(10);
    let ttl = Duration::from_secs(6);
    store.publish("a", "{}", ttl).await.expect("publish a");
    store.publish("b", "{}", ttl).await.expect("publish b");
    assert_eq!(
        store.claim("standup", "a", lease).await.expect("claim"),
        "a"
    );
    assert_eq!(
        store.claim("standup", "b", lease).await.expect("claim"),
        "a"
    );
    assert_eq!(
        store.renew("standup", "a", lease).await.expect("renew"),
        "a"
    );
    // a dies (its record gone): the room is b's on the next claim, and a learns at its renewal.
    store.withdraw("a").await.expect("withdraw");
    assert_eq!(
        store.claim("standup", "b", lease).await.expect("claim"),
        "b"
    );
    assert_eq!(
        store.renew("standup", "a", lease).await.expect("renew"),
        "b"
    );
    // Only the holder releases.
    store.release("standup", "a").await.expect("release");
    assert_eq!(
        store.holder("standup").await.expect("get").as_deref(),
        Some("b")
    );
    store.release("standup", "b").await.expect("release");
    assert_eq!(store.holder("standup").await.expect("get"), None);

    // Redis gone: calls fail at once (no hang); back, they work again.
    redis.stop();
    assert!(store.claim("two", "b", lease).await.is_err());
    redis.restart();
    let mut claimed = None;
    for _ in 0..50 {
        if let Ok(holder) = store.claim("two", "b", lease).await {
            claimed = Some(holder);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        claimed.as_deref(),
        Some("b"),
        "the connection comes back by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_entering_through_two_nodes_share_one_composite() {
    init();
    let redis = Redis::start();
    let nodes = three_nodes("cluster-two-doors", &redis);
    until_all_published(&nodes[0], 3).await;

    let mut crowd = Crowd::new(&nodes[0].url(), "standup").expect("a crowd");
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("joining through a");
    crowd.url = nodes[1].url();
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("joining through b");
    settle(
        &crowd,
        "both participants in one composite, through two doors",
    )
    .await;

    let home = holder(&nodes[2], "standup")
        .await
        .expect("c lists the room");
    let room = node(&nodes, &home)
        .room("standup")
        .await
        .expect("the room on its node");
    assert_eq!(room["participants"].as_array().map(Vec::len), Some(2));
    for other in nodes
        .iter()
        .filter(|n| n.url() != node(&nodes, &home).url())
    {
        assert!(
            other.room("standup").await.is_none(),
            "one node holds the room"
        );
    }
    // At most one of the two came in through the room's own node: the other was redirected.
    let redirected = crowd
        .members
        .iter()
        .filter(|m| !m.observe().redirects.is_empty())
        .count();
    assert!(
        redirected >= 1,
        "someone entered through a node without the room"
    );
    // The doors count whom they sent on.
    let mut sent_on = 0;
    for n in &nodes {
        sent_on += metric(n, "mcu_cluster_redirects_total").await.unwrap_or(0);
    }
    assert!(
        sent_on >= 1,
        "mcu_cluster_redirects_total counts the redirect"
    );
    // The admin API of a node without the room answers 307 to the room's node.
    let door = nodes
        .iter()
        .find(|n| n.url() != node(&nodes, &home).url())
        .expect("another node");
    let reply = door.request("GET", "/api/v1/rooms/standup", &[]).await;
    assert_eq!(reply.status, 307);
    let location = reply.headers["location"].to_str().expect("a location");
    assert_eq!(
        location,
        format!("{}/api/v1/rooms/standup", node(&nodes, &home).url())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_rooms_opened_through_one_node_spread_over_all_three() {
    init();
    let redis = Redis::start();
    let nodes = three_nodes("cluster-spread", &redis);
    until_all_published(&nodes[0], 3).await;

    let mut crowds = Vec::new();
    for i in 0..12 {
        let mut crowd = Crowd::new(&nodes[0].url(), &format!("room-{i}")).expect("a crowd");
        crowd
            .join(VideoCodec::Vp8)
            .await
            .expect("joining through a");
        crowds.push(crowd);
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..12 {
        let home = holder(&nodes[1], &format!("room-{i}"))
            .await
            .unwrap_or_else(|| panic!("room-{i} is listed"));
        *per_node.entry(home).or_insert(0) += 1;
    }
    println!("rooms per node: {per_node:?}");
    assert_eq!(per_node.len(), 3, "every node holds rooms: {per_node:?}");
    assert!(
        per_node.values().all(|n| *n >= 3),
        "spread by load, not piled up: {per_node:?}"
    );
    for crowd in &crowds {
        settle(crowd, "each room's participant sees itself").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_rooms_come_back_on_the_others_with_their_participants() {
    init();
    let redis = Redis::start();
    let mut nodes = three_nodes("cluster-kill", &redis);
    until_all_published(&nodes[0], 3).await;

    let (crowd, home) = room_of_two(&nodes, "the room before its node dies").await;
    let index = index_of(&home);
    // It records; the cluster learns that with the node's next record.
    let started = nodes[index]
        .request("POST", "/api/v1/rooms/standup/recording", &[])
        .await;
    assert_eq!(
        started.status,
        201,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = nodes[0].rooms().await;
        let marked = rooms["cluster"]["rooms"].as_array().is_some_and(|rooms| {
            rooms
                .iter()
                .any(|r| r["room"] == "standup" && r["recording"] == true)
        });
        if marked {
            break;
        }
        assert!(
            Instant::now() < end,
            "the cluster never listed the room as recording"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its recording is in the cluster's list of recordings, with its node.
    let first = until_recording_listed(&nodes[0], |r| r["node"] == home.as_str()).await;
    nodes[index].kill();
    let killed = Instant::now();
    drop(crowd);

    // The clients come back through a node that is alive, as the web client does (through the
    // page's node); the door sends them where the room reopens.
    let door = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| *i != index)
        .map(|(_, n)| n)
        .expect("a live node");
    let mut crowd = Crowd::new(&door.url(), "standup").expect("a crowd");
    while crowd.members.len() < 2 {
        let spec = spec_for(crowd.members.len(), VideoCodec::Vp8);
        if let Err(e) = crowd.join_with(spec).await {
            assert!(
                killed.elapsed() < BACK_WITHIN,
                "not back within {BACK_WITHIN:?}: {e:#}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let new_home = holder(door, "standup")
        .await
        .expect("the room is listed again");
    assert_ne!(new_home, home, "the room reopened on a live node");
    let room = node(&nodes, &new_home)
        .wait_for_room(
            "standup",
            BACK_WITHIN.saturating_sub(killed.elapsed()),
            |r| r["participants"].as_array().map(Vec::len) == Some(2),
        )
        .await;
    println!(
        "room back on {new_home} with {} participants {:.1} s after the kill",
        room["participants"].as_array().map_or(0, Vec::len),
        killed.elapsed().as_secs_f64()
    );
    settle(&crowd, "the room again, on another node").await;
    // Its recording goes on there, in a new file.
    assert!(
        !room["recording"].is_null(),
        "the reopened room records again: {room:#}"
    );

    // The third node lists both files with their nodes, sends a request for the new one to its
    // node, and says the first one's node is not running.
    let third = &nodes[3 - index - index_of(&new_home)];
    let second = until_recording_listed(third, |r| {
        r["node"] == new_home.as_str() && r["status"] == "recording"
    })
    .await;
    let first =
        until_recording_listed(third, |r| r["id"] == first["id"] && r["node_live"] == false).await;
    let path = format!(
        "/api/v1/recordings/{}",
        second["id"].as_str().unwrap_or_default()
    );
    let moved = third.request("GET", &path, &[]).await;
    assert_eq!(moved.status, 307);
    let location = format!("{}{path}", node(&nodes, &new_home).url());
    assert_eq!(
        moved.headers["location"].to_str().ok(),
        Some(location.as_str())
    );
    assert_eq!(
        node(&nodes, &new_home)
            .request("GET", &path, &[])
            .await
            .status,
        200
    );
    let gone = format!(
        "/api/v1/recordings/{}/file",
        first["id"].as_str().unwrap_or_default()
    );
    let reply = third.request("GET", &gone, &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "node_unavailable");
}

/// The first recording in `door`'s cluster-wide list that `matches`, waited for (a node
/// publishes its list with its next record).
async fn until_recording_listed(
    door: &Server,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = door.request("GET", "/api/v1/recordings", &[]).await;
        let listed = reply.json()["cluster"]["recordings"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|r| r["room"] == "standup" && matches(r))
                    .cloned()
            });
        if let Some(recording) = listed {
            return recording;
        }
        assert!(Instant::now() < end, "never listed: {:#}", reply.json());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_takes_no_new_room_and_its_rooms_finish() {
    init();
    let redis = Redis::start();
    let mut nodes = three_nodes("cluster-drain", &redis);
    until_all_published(&nodes[0], 3).await;

    let mut crowd = Crowd::new(&nodes[0].url(), "standup").expect("a crowd");
    crowd.join(VideoCodec::Vp8).await.expect("joining");
    let home = holder(&nodes[0], "standup")
        .await
        .expect("the room is listed");
    let index = index_of(&home);
    // SIGTERM drains a cluster node: it goes on serving its room.
    let pid = nodes[index].pid().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let draining = &nodes[index];
    common::wait_for("the node to say it drains", Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&draining.log).unwrap_or_default();
        log.contains("draining").then_some(())
    })
    .await;
    assert_eq!(metric(draining, "mcu_cluster_draining").await, Some(1));
    assert_eq!(
        metric(&nodes[(index + 1) % 3], "mcu_cluster_draining").await,
        Some(0)
    );
    // New rooms through the draining node's own door go elsewhere.
    let mut others = Vec::new();
    for i in 0..3 {
        let room = format!("new-{i}");
        let mut newcomer = Crowd::new(&draining.url(), &room).expect("a crowd");
        newcomer
            .join(VideoCodec::Vp8)
            .await
            .expect("joining a new room");
        let placed = holder(draining, &room).await.expect("listed");
        assert_ne!(placed, home, "{room} went to the draining node");
        others.push(newcomer);
    }
    // Its own room goes on, and takes newcomers.
    crowd.url = nodes[(index + 1) % 3].url();
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("joining the draining node's room");
    settle(&crowd, "the draining node's room, going on").await;
    assert_eq!(
        holder(&nodes[(index + 1) % 3], "standup").await,
        Some(home.clone())
    );
    // When its last room ends, the node stops by itself.
    crowd.leave_all().await;
    let stopped = nodes[index].wait_exit(Duration::from_secs(15));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the drained node exits cleanly once its room ended: {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_running_rooms_go_on_and_new_rooms_are_refused_with_the_reason() {
    init();
    let mut redis = Redis::start();
    let nodes = three_nodes("cluster-redis-down", &redis);
    until_all_published(&nodes[0], 3).await;

    let (crowd, home) = room_of_two(&nodes, "the room before Redis stops").await;

    redis.stop();
    // Past a whole lease: a node that gave rooms up when Redis is silent would have by now.
    tokio::time::sleep(mcu_server::cluster::ROOM_LEASE + Duration::from_secs(2)).await;
    settle(&crowd, "the room going on without Redis").await;
    assert!(node(&nodes, &home).room("standup").await.is_some());
    // Operators see it: every node's gauge says Redis is out of reach.
    for n in &nodes {
        assert_eq!(metric(n, "mcu_cluster_registry_up").await, Some(0));
    }

    let mut refused = Crowd::new(&nodes[1].url(), "later").expect("a crowd");
    let error = refused
        .join(VideoCodec::Vp8)
        .await
        .err()
        .expect("a new room is refused while Redis is down");
    let text = format!("{error:#}");
    assert!(
        text.contains("ClusterUnavailable") && text.contains("Redis"),
        "the refusal says why: {text}"
    );

    // Redis back (empty): the nodes publish again and a new room opens.
    redis.restart();
    let mut later = Crowd::new(&nodes[1].url(), "later").expect("a crowd");
    let end = Instant::now() + Duration::from_secs(15);
    while later.join(VideoCodec::Vp8).await.is_err() {
        assert!(Instant::now() < end, "no new room after Redis came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settle(&later, "a new room once Redis is back").await;
    // Each node's gauge comes back with its next record (one every 2 s).
    let end = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while metric(n, "mcu_cluster_registry_up").await != Some(1) {
            assert!(
                Instant::now() < end,
                "a node still says Redis is out of reach"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_lease_closes_the_room_and_sends_its_people_to_the_new_holder() {
    init();
    let redis = Redis::start();
    let nodes = three_nodes("cluster-lost-lease", &redis);
    until_all_published(&nodes[0], 3).await;

    let mut crowd = Crowd::new(&nodes[0].url(), "standup").expect("a crowd");
    crowd.join(VideoCodec::Vp8).await.expect("joining");
    settle(&crowd, "the room before its lease is taken").await;
    let home = holder(&nodes[0], "standup")
        .await
        .expect("the room is listed");
    let thief = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != home)
        .expect("another node");
    // What a split (Redis restarted empty, a door placing the room elsewhere meanwhile) leaves:
    // another live node holds the lease.
    let set = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "SET",
            "mcu:room:standup",
            thief,
        ])
        .output()
        .expect("redis-cli (Debian's redis-tools, with redis-server)");
    assert!(set.status.success());
    let member = &crowd.members[0];
    let url = common::wait_for(
        "the old holder to send its participant to the new one",
        Duration::from_secs(10),
        || {
            member.observe().notices.iter().find_map(|n| match n {
                mcu_server::protocol::ServerMessage::Redirect { url } => Some(url.clone()),
                _ => None,
            })
        },
    )
    .await;
    let thief_node = node(&nodes, thief);
    assert_eq!(url, thief_node.ws_url("standup"));
    node(&nodes, &home)
        .wait_for_room_gone("standup", Duration::from_secs(10))
        .await;
    // The client follows: the room opens on the new holder.
    let mut crowd = Crowd::new(&thief_node.url(), "standup").expect("a crowd");
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("joining the new holder");
    settle(&crowd, "the room on its new holder").await;
}

/// One address asks a door for many new rooms: past the door's `--max-new-rooms-per-address`
/// it is refused before anything is placed, so it cannot fill the cluster with leases of rooms
/// that never open (placing takes a lease for the chosen node at once), through the WebSocket or
/// through WHIP; and a door that wants a join token places nothing for a request without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_rooms_through_one_door_places_no_more_than_its_limit() {
    init();
    let redis = Redis::start();
    let door = cluster_node(
        "cluster-flood",
        &redis,
        "a",
        &["--max-new-rooms-per-address", "3"],
    );
    let _other = cluster_node(
        "cluster-flood",
        &redis,
        "b",
        &["--max-new-rooms-per-address", "0"],
    );
    let guarded = cluster_node(
        "cluster-flood",
        &redis,
        "c",
        &["--jwt-secret", "a cluster test secret of 32+ bytes!!"],
    );
    until_all_published(&door, 3).await;
    let store = Store::new(&redis.url).expect("a store");

    let mut answers = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..6 {
        let room = format!("flood-{i}");
        let (answer, socket) = common::bare_join(&door, &room, "stranger").await;
        answers.push((room, answer));
        sockets.push(socket);
    }
    let placed: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a["type"] != "error")
        .map(|(room, _)| room.as_str())
        .collect();
    assert_eq!(placed.len(), 3, "three rooms a minute: {answers:?}");
    for (room, answer) in &answers {
        let holder = store.holder(room).await.expect("Redis answers");
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            assert_eq!(holder, None, "{room} was refused, yet placed");
        } else {
            assert!(holder.is_some(), "{room} was answered {answer}, not placed");
        }
    }
    // WHIP counts at the same door, after reading the offer: refused, nothing placed.
    let offer = include_bytes!("data/ffmpeg-whip-offer.sdp").to_vec();
    let sdp = [("content-type", "application/sdp")];
    let reply = door
        .request_with_body("POST", "/whip/flood-whip", &sdp, offer.clone())
        .await;
    assert_eq!(
        reply.status,
        429,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["code"], "rate_limited");
    assert_eq!(
        store.holder("flood-whip").await.expect("Redis answers"),
        None
    );
    // Without a token, nothing is placed: the token is checked before the room is.
    let reply = guarded
        .request_with_body("POST", "/whip/anonymous", &sdp, offer)
        .await;
    assert_eq!(
        reply.status,
        401,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        store.holder("anonymous").await.expect("Redis answers"),
        None
    );
    let (answer, _socket) = common::bare_join(&guarded, "anonymous", "stranger").await;
    assert_eq!(answer["code"], "unauthorized", "{answer}");
    assert_eq!(
        store.holder("anonymous").await.expect("Redis answers"),
        None
    );
}
