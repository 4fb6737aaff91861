//! The layout a room draws, as clients and the admin API ask for it (`set_layout`, `PUT
//! /api/v1/rooms/{room}/layout`, `--layouts FILE`) and as the server reports it (`layout`,
//! `active_speaker`). Plain serde types; `layout::spec` checks them and says what is wrong.

use serde::{Deserialize, Serialize};

/// How a participant's picture fills a tile of another shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Scaled until the tile is full, the edges that stick out cut off (a face stays centred).
    #[default]
    Crop,
    /// Scaled until the whole picture fits, black bars on the sides that are left.
    Letterbox,
}

/// A request for a layout. `layout` is `grid`, `speaker`, `pin`, `pip`, `custom`, or the name of
/// a layout from the server's `--layouts` file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutRequest {
    pub layout: String,
    /// `pin`: who is large. `pip`: who fills the frame (the active speaker when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    /// `pip`: who is in the corner (the first other participant when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inset_participant_id: Option<String>,
    /// `custom`: the regions, in units of the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<RegionRequest>>,
    /// How pictures fill their tiles (crop when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<Fit>,
}

/// One region of a custom layout: where, in units of the frame (0–1 from the top left), above
/// which others (`z`, higher is nearer), and who is shown there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionRequest {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    #[serde(default)]
    pub z: u32,
    pub seat: SeatRequest,
    /// This region's own fit (the layout's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<Fit>,
}

/// Who a region shows: `"speaker"`, a participant id such as `"p2"`, or a number n ≥ 1: the n-th
/// participant (in joining order) not shown in a region of its own or as the speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeatRequest {
    Other(u32),
    Named(String),
}

/// A file of named layouts (`--layouts FILE`): `{"layouts": {"name": {...request...}}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    pub layouts: std::collections::BTreeMap<String, LayoutRequest>,
}
