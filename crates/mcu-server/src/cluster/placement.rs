//! Where a new room goes: the live, serving node with the most headroom. Pure, so it is tested
//! without Redis.
//!
//! A node's load is the larger of what it measured (its process's CPU over the last few seconds)
//! and what its rooms should cost by the bench's figures: a CPU sample lags a room that opened a
//! second ago, and twelve rooms opened in a burst must not all land on the node that looked idle
//! when the burst began. The room count comes from the leases (fresh at every placement), the
//! participants from the node's last record (at most `PUBLISH_EVERY` old).

use serde::{Deserialize, Serialize};

/// What a room costs before anyone is in it counts, in cores: its compositor, its encodes and
/// its mixer. From docs/performance.md on the 2-core VM: four rooms of four at 0.95 cores
/// (0.24 a room) and one room of sixteen at 0.43–0.54 fit 0.13 + 0.025 per participant.
pub const ROOM_COST_CORES: f64 = 0.13;
/// What each participant adds (a decode, a mix-minus voice, its share of the sending).
pub const PARTICIPANT_COST_CORES: f64 = 0.025;
/// The share of a node's cores rooms may fill: the rest absorbs bursts (a keyframe for everyone,
/// a join's pipeline build) without late frames.
pub const USABLE_SHARE: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Serving,
    /// Takes no new room; its rooms go on until they end.
    Draining,
}

/// One open room as its node publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomLoad {
    pub room: String,
    pub participants: usize,
    pub watchers: usize,
    pub recording: bool,
}

/// What each node publishes every `PUBLISH_EVERY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// How clients reach this node (`--node-url`).
    pub url: String,
    pub state: NodeState,
    pub cores: usize,
    /// Its process's CPU, in cores, over the last publishing period.
    pub cpu_cores: f64,
    /// `--max-rooms`, if it has a limit.
    pub max_rooms: Option<usize>,
    pub rooms: Vec<RoomLoad>,
}

impl NodeRecord {
    pub fn participants(&self) -> usize {
        self.rooms.iter().map(|r| r.participants).sum()
    }
}

/// A node as a door sees it: its record, and how many rooms its leases say it holds now.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub record: NodeRecord,
    pub held_rooms: usize,
}

impl Candidate {
    /// Cores left for new rooms (negative when over).
    pub fn headroom(&self) -> f64 {
        let estimated = self.held_rooms as f64 * ROOM_COST_CORES
            + self.record.participants() as f64 * PARTICIPANT_COST_CORES;
        let load = estimated.max(self.record.cpu_cores);
        self.record.cores as f64 * USABLE_SHARE - load
    }

    /// Whether a new room may go here.
    pub fn takes_rooms(&self) -> bool {
        self.record.state == NodeState::Serving
            && self
                .record
                .max_rooms
                .is_none_or(|limit| self.held_rooms < limit)
            && self.headroom() >= ROOM_COST_CORES
    }
}

/// The node for a new room: the most headroom among those that take rooms; ties go to the one
/// holding fewer rooms, then by id (so two doors deciding at once tend to agree).
pub fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.takes_rooms())
        .max_by(|a, b| {
            a.headroom()
                .total_cmp(&b.headroom())
                .then(b.held_rooms.cmp(&a.held_rooms))
                .then(b.record.id.cmp(&a.record.id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, held_rooms: usize, participants: usize, cpu: f64) -> Candidate {
        Candidate {
            record: NodeRecord {
                id: id.into(),
                url: format!("http://{id}"),
                state: NodeState::Serving,
                cores: 2,
                cpu_cores: cpu,
                max_rooms: None,
                rooms: vec![RoomLoad {
                    room: "r".into(),
                    participants,
                    watchers: 0,
                    recording: false,
                }],
            },
            held_rooms,
        }
    }

    #[test]
    fn a_burst_of_rooms_spreads_over_idle_nodes_by_their_leases() {
        let mut nodes = vec![
            node("a", 0, 0, 0.0),
            node("b", 0, 0, 0.0),
            node("c", 0, 0, 0.0),
        ];
        let mut placed = Vec::new();
        for _ in 0..12 {
            let id = choose(&nodes).expect("room for it").record.id.clone();
            placed.push(id.clone());
            nodes
                .iter_mut()
                .find(|n| n.record.id == id)
                .expect("chosen")
                .held_rooms += 1;
        }
        for id in ["a", "b", "c"] {
            assert_eq!(placed.iter().filter(|p| *p == id).count(), 4, "{placed:?}");
        }
    }

    #[test]
    fn measured_cpu_and_participants_count_and_draining_or_full_nodes_take_nothing() {
        // a's one room is busy (16 people), b's CPU is high: c wins with two quiet rooms.
        let nodes = [
            node("a", 1, 16, 0.5),
            node("b", 0, 0, 1.2),
            node("c", 2, 2, 0.3),
        ];
        assert_eq!(choose(&nodes).map(|c| c.record.id.as_str()), Some("c"));

        let mut draining = node("a", 0, 0, 0.0);
        draining.record.state = NodeState::Draining;
        let mut at_limit = node("b", 2, 0, 0.0);
        at_limit.record.max_rooms = Some(2);
        let saturated = node("c", 0, 0, 1.55);
        assert!(choose(&[draining, at_limit, saturated]).is_none());
    }
}
