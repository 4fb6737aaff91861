//! A layout as the room keeps it: a request (protocol/layout.rs) checked once, so that drawing it
//! later cannot fail. Every refusal says what is wrong in words a person can act on.

use std::collections::BTreeMap;

use crate::ids::ParticipantId;
use crate::protocol::layout::{Fit, LayoutFile, LayoutRequest, RegionRequest, SeatRequest};

/// A custom layout holds at most this many regions: as many as the largest grid has tiles.
pub const MAX_REGIONS: usize = super::MAX_TILES;
/// A region narrower or lower than this share of the frame (1/20: 64×36 at 1280×720) shows too
/// little to recognise anyone, and is more likely a typo than a wish.
pub const MIN_REGION_SIDE: f64 = 0.05;
/// Regions may reach this far past the frame's edge (rounding in hand-written JSON such as
/// 0.333 + 0.667); what is past the edge is not drawn.
const EDGE_SLACK: f64 = 0.001;
/// The highest `z` a region may ask for: enough for any stack, small enough that every tile's
/// three compositor layers (outline, placeholder, camera) stay in range.
pub const MAX_Z: u32 = 100;
/// Longest layout name, as for room names: it travels in messages and logs.
pub const MAX_LAYOUT_NAME_LEN: usize = 64;

/// Who a region shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// The active speaker (the first participant before anyone has spoken).
    Speaker,
    Participant(ParticipantId),
    /// The n-th (from 1) participant, in joining order, that no other region shows.
    Other(u32),
}

/// A region of a custom layout, in units of the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub z: u32,
    pub seat: Seat,
    pub fit: Option<Fit>,
}

/// What is drawn where.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Everyone in equal tiles, the active speaker's outlined.
    Grid,
    /// The active speaker large, everyone else in a strip below.
    Speaker,
    /// One participant large (a presenter), everyone else in a strip below.
    Pin(ParticipantId),
    /// One participant fills the frame (the speaker when None), another sits in a corner (the
    /// first other participant when None); nobody else is drawn.
    Pip {
        main: Option<ParticipantId>,
        inset: Option<ParticipantId>,
    },
    /// Regions from the request or the `--layouts` file, under this name.
    Custom { name: String, regions: Vec<Region> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayoutSpec {
    pub kind: Kind,
    pub fit: Fit,
}

impl Default for LayoutSpec {
    fn default() -> Self {
        LayoutSpec {
            kind: Kind::Grid,
            fit: Fit::default(),
        }
    }
}

impl LayoutSpec {
    /// The name clients are told (`layout` message).
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Grid => "grid",
            Kind::Speaker => "speaker",
            Kind::Pin(_) => "pin",
            Kind::Pip { .. } => "pip",
            Kind::Custom { name, .. } => name,
        }
    }

    /// Participants this layout names; the room checks they are in it.
    pub fn named_participants(&self) -> Vec<ParticipantId> {
        match &self.kind {
            Kind::Grid | Kind::Speaker => Vec::new(),
            Kind::Pin(who) => vec![*who],
            Kind::Pip { main, inset } => main.iter().chain(inset.iter()).copied().collect(),
            Kind::Custom { regions, .. } => regions
                .iter()
                .filter_map(|r| match r.seat {
                    Seat::Participant(who) => Some(who),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Whether a change of active speaker changes what is drawn (beyond the outline).
    pub fn follows_speaker(&self) -> bool {
        match &self.kind {
            Kind::Grid | Kind::Pin(_) => false,
            Kind::Speaker => true,
            Kind::Pip { main, .. } => main.is_none(),
            Kind::Custom { regions, .. } => regions.iter().any(|r| r.seat == Seat::Speaker),
        }
    }

    /// The layout without the participant who left: a pin or a picture-in-picture on them falls
    /// back to following the speaker, a custom region on them shows nobody.
    pub fn without(&self, gone: ParticipantId) -> LayoutSpec {
        let kind = match &self.kind {
            Kind::Pin(who) if *who == gone => Kind::Speaker,
            Kind::Pip { main, inset } => Kind::Pip {
                main: main.filter(|w| *w != gone),
                inset: inset.filter(|w| *w != gone),
            },
            other => other.clone(),
        };
        LayoutSpec {
            kind,
            fit: self.fit,
        }
    }
}

/// Why a layout was refused; the text is what the asker is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("unknown layout {0:?}: use grid, speaker, pin, pip, custom{1}")]
    Unknown(String, String),
    #[error("the {0} layout needs participant_id")]
    MissingParticipant(&'static str),
    #[error("{0:?} is not a participant id (they look like \"p2\")")]
    BadParticipant(String),
    #[error("{field} is not used by the {layout} layout")]
    Unused {
        field: &'static str,
        layout: &'static str,
    },
    #[error("a custom layout needs regions (at least one)")]
    NoRegions,
    #[error("a custom layout holds at most {MAX_REGIONS} regions, not {0}")]
    TooManyRegions(usize),
    #[error("region {index}: {reason}")]
    BadRegion { index: usize, reason: String },
    #[error("{0} is not in this room")]
    NotHere(ParticipantId),
    #[error("layout name {0:?}: {1}")]
    BadName(String, String),
}

/// The server's named layouts (from `--layouts FILE`), checked when the server starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedLayouts {
    layouts: BTreeMap<String, LayoutSpec>,
    /// The fit of a request that names none (`--fit`; crop by default).
    default_fit: Fit,
}

impl NamedLayouts {
    /// Reads a layouts file's JSON; the error names the layout and what is wrong with it.
    pub fn parse(json: &str) -> Result<Self, String> {
        let file: LayoutFile =
            serde_json::from_str(json).map_err(|e| format!("not a layouts file: {e}"))?;
        let mut named = NamedLayouts::default();
        for (name, request) in file.layouts {
            check_name(&name).map_err(|e| e.to_string())?;
            let mut spec = resolve_builtin(&request, &name, Fit::default())
                .map_err(|e| format!("{name}: {e}"))?;
            if let Kind::Custom { name: n, .. } = &mut spec.kind {
                *n = name.clone();
            }
            named.layouts.insert(name, spec);
        }
        Ok(named)
    }

    /// From now on a request that names no fit gets `fit` (the file's layouts keep their own).
    pub fn with_default_fit(mut self, fit: Fit) -> Self {
        self.default_fit = fit;
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.layouts.keys().map(String::as_str)
    }

    /// Checks a request and turns it into the layout to draw.
    pub fn resolve(&self, request: &LayoutRequest) -> Result<LayoutSpec, LayoutError> {
        if let Some(named) = self.layouts.get(&request.layout) {
            let mut spec = named.clone();
            if let Some(fit) = request.fit {
                spec.fit = fit;
            }
            return Ok(spec);
        }
        resolve_builtin(request, "custom", self.default_fit).map_err(|e| match e {
            LayoutError::Unknown(name, _) => LayoutError::Unknown(name, self.listed()),
            other => other,
        })
    }

    fn listed(&self) -> String {
        self.layouts
            .keys()
            .map(|n| format!(", {n}"))
            .collect::<String>()
    }
}

fn check_name(name: &str) -> Result<(), LayoutError> {
    let bad = |why: &str| Err(LayoutError::BadName(name.to_string(), why.to_string()));
    if ["grid", "speaker", "pin", "pip", "custom"].contains(&name) {
        return bad("is a built-in layout's name");
    }
    if name.is_empty() || name.len() > MAX_LAYOUT_NAME_LEN {
        return bad(&format!("must be 1 to {MAX_LAYOUT_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '+')
    {
        return bad("may hold only ASCII letters, digits, '-', '_' and '+'");
    }
    Ok(())
}

fn participant(text: &str) -> Result<ParticipantId, LayoutError> {
    text.parse()
        .map_err(|_| LayoutError::BadParticipant(text.to_string()))
}

fn resolve_builtin(
    request: &LayoutRequest,
    custom_name: &str,
    default_fit: Fit,
) -> Result<LayoutSpec, LayoutError> {
    let unused = |field, layout| Err(LayoutError::Unused { field, layout });
    let layout = request.layout.as_str();
    let kind = match layout {
        "grid" | "speaker" => {
            let layout = if layout == "grid" { "grid" } else { "speaker" };
            if request.participant_id.is_some() {
                return unused("participant_id", layout);
            }
            if request.inset_participant_id.is_some() {
                return unused("inset_participant_id", layout);
            }
            if request.regions.is_some() {
                return unused("regions", layout);
            }
            if layout == "grid" {
                Kind::Grid
            } else {
                Kind::Speaker
            }
        }
        "pin" => {
            if request.inset_participant_id.is_some() {
                return unused("inset_participant_id", "pin");
            }
            if request.regions.is_some() {
                return unused("regions", "pin");
            }
            let who = request
                .participant_id
                .as_deref()
                .ok_or(LayoutError::MissingParticipant("pin"))?;
            Kind::Pin(participant(who)?)
        }
        "pip" => {
            if request.regions.is_some() {
                return unused("regions", "pip");
            }
            let main = request.participant_id.as_deref().map(participant);
            let inset = request.inset_participant_id.as_deref().map(participant);
            Kind::Pip {
                main: main.transpose()?,
                inset: inset.transpose()?,
            }
        }
        "custom" => {
            if request.participant_id.is_some() {
                return unused("participant_id", "custom");
            }
            if request.inset_participant_id.is_some() {
                return unused("inset_participant_id", "custom");
            }
            let regions = request.regions.as_deref().unwrap_or_default();
            Kind::Custom {
                name: custom_name.to_string(),
                regions: regions_of(regions)?,
            }
        }
        other => return Err(LayoutError::Unknown(other.to_string(), String::new())),
    };
    Ok(LayoutSpec {
        kind,
        fit: request.fit.unwrap_or(default_fit),
    })
}

fn regions_of(requests: &[RegionRequest]) -> Result<Vec<Region>, LayoutError> {
    if requests.is_empty() {
        return Err(LayoutError::NoRegions);
    }
    if requests.len() > MAX_REGIONS {
        return Err(LayoutError::TooManyRegions(requests.len()));
    }
    let mut seated = Vec::new();
    requests
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |reason: String| LayoutError::BadRegion { index, reason };
            for (name, v) in [
                ("x", r.x),
                ("y", r.y),
                ("width", r.width),
                ("height", r.height),
            ] {
                if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                    return Err(bad(format!(
                        "{name} is {v}, outside 0–1 (units of the frame)"
                    )));
                }
            }
            if r.width < MIN_REGION_SIDE || r.height < MIN_REGION_SIDE {
                return Err(bad(format!(
                    "{}×{} is smaller than {MIN_REGION_SIDE} of the frame either way",
                    r.width, r.height
                )));
            }
            if r.x + r.width > 1.0 + EDGE_SLACK || r.y + r.height > 1.0 + EDGE_SLACK {
                return Err(bad("reaches past the frame's right or bottom edge".into()));
            }
            if r.z > MAX_Z {
                return Err(bad(format!("z is {}, above the largest, {MAX_Z}", r.z)));
            }
            let seat = match &r.seat {
                SeatRequest::Other(0) => {
                    return Err(bad("seat 0: others are counted from 1".into()));
                }
                SeatRequest::Other(n) if *n as usize > MAX_REGIONS => {
                    return Err(bad(format!("seat {n}: a room has at most {MAX_REGIONS}")));
                }
                SeatRequest::Other(n) => Seat::Other(*n),
                SeatRequest::Named(s) if s == "speaker" => Seat::Speaker,
                SeatRequest::Named(s) => Seat::Participant(participant(s).map_err(|_| {
                    bad(format!(
                        "seat {s:?} is neither \"speaker\", a participant id (\"p2\") nor a number"
                    ))
                })?),
            };
            if seated.contains(&seat) && seat != Seat::Speaker {
                return Err(bad("shows the same seat as an earlier region".into()));
            }
            seated.push(seat);
            Ok(Region {
                x: r.x,
                y: r.y,
                width: r.width.min(1.0 - r.x),
                height: r.height.min(1.0 - r.y),
                z: r.z,
                seat,
                fit: r.fit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> LayoutRequest {
        serde_json::from_str(json).expect("a well-formed request")
    }

    fn resolve(json: &str) -> Result<LayoutSpec, LayoutError> {
        NamedLayouts::default().resolve(&request(json))
    }

    #[test]
    fn built_in_layouts_resolve_with_their_participants() {
        assert_eq!(resolve(r#"{"layout":"grid"}"#).unwrap().kind, Kind::Grid);
        let pin = resolve(r#"{"layout":"pin","participant_id":"p2","fit":"letterbox"}"#).unwrap();
        assert_eq!(pin.kind, Kind::Pin(ParticipantId(2)));
        assert_eq!(pin.fit, Fit::Letterbox);
        assert_eq!(
            resolve(r#"{"layout":"pip","inset_participant_id":"p3"}"#)
                .unwrap()
                .kind,
            Kind::Pip {
                main: None,
                inset: Some(ParticipantId(3))
            }
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            (r#"{"layout":"mosaic"}"#, "unknown layout \"mosaic\""),
            (r#"{"layout":"pin"}"#, "needs participant_id"),
            (
                r#"{"layout":"pin","participant_id":"bob"}"#,
                "not a participant id",
            ),
            (
                r#"{"layout":"grid","participant_id":"p1"}"#,
                "not used by the grid",
            ),
            (r#"{"layout":"custom"}"#, "needs regions"),
            (
                r#"{"layout":"custom","regions":[{"x":0.5,"y":0,"width":0.6,"height":1,"seat":1}]}"#,
                "region 0: reaches past",
            ),
            (
                r#"{"layout":"custom","regions":[{"x":0,"y":0,"width":0.01,"height":1,"seat":1}]}"#,
                "smaller than",
            ),
            (
                r#"{"layout":"custom","regions":[{"x":0,"y":0,"width":1,"height":1,"seat":0}]}"#,
                "counted from 1",
            ),
            (
                r#"{"layout":"custom","regions":[{"x":0,"y":0,"width":1,"height":1,"seat":"boss"}]}"#,
                "neither \"speaker\"",
            ),
            (
                r#"{"layout":"custom","regions":[{"x":0,"y":0,"width":1,"height":1,"seat":"p1"},{"x":0,"y":0,"width":0.5,"height":0.5,"seat":"p1"}]}"#,
                "region 1: shows the same seat",
            ),
            (
                r#"{"layout":"custom","regions":[{"x":-0.1,"y":0,"width":0.5,"height":0.5,"seat":1}]}"#,
                "x is -0.1",
            ),
        ];
        for (json, expected) in cases {
            let error = resolve(json).expect_err(json).to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn unknown_fields_and_non_numbers_are_refused_by_the_parser() {
        assert!(serde_json::from_str::<LayoutRequest>(r#"{"layout":"grid","colour":1}"#).is_err());
        assert!(serde_json::from_str::<LayoutRequest>(
            r#"{"layout":"custom","regions":[{"x":"0","y":0,"width":1,"height":1,"seat":1}]}"#
        )
        .is_err());
    }

    #[test]
    fn a_layouts_file_names_custom_and_tuned_built_in_layouts() {
        let named = NamedLayouts::parse(
            r#"{"layouts":{
                "stage+2":{"layout":"custom","regions":[
                    {"x":0,"y":0,"width":0.75,"height":1,"seat":"speaker"},
                    {"x":0.75,"y":0,"width":0.25,"height":0.5,"seat":1},
                    {"x":0.75,"y":0.5,"width":0.25,"height":0.5,"seat":2}]},
                "boxed":{"layout":"grid","fit":"letterbox"}}}"#,
        )
        .unwrap();
        let stage = named.resolve(&request(r#"{"layout":"stage+2"}"#)).unwrap();
        assert_eq!(stage.name(), "stage+2");
        assert!(stage.follows_speaker());
        let boxed = named.resolve(&request(r#"{"layout":"boxed"}"#)).unwrap();
        assert_eq!((boxed.kind, boxed.fit), (Kind::Grid, Fit::Letterbox));
        let unknown = named.resolve(&request(r#"{"layout":"nope"}"#)).unwrap_err();
        assert!(unknown.to_string().contains("boxed, stage+2"), "{unknown}");
    }

    #[test]
    fn a_layouts_file_with_a_bad_layout_names_it() {
        let error = NamedLayouts::parse(r#"{"layouts":{"wide":{"layout":"custom","regions":[]}}}"#)
            .unwrap_err();
        assert!(error.starts_with("wide: "), "{error}");
        let error =
            NamedLayouts::parse(r#"{"layouts":{"grid":{"layout":"speaker"}}}"#).unwrap_err();
        assert!(error.contains("built-in"), "{error}");
    }

    #[test]
    fn a_pin_on_someone_who_left_follows_the_speaker_again() {
        let pin = resolve(r#"{"layout":"pin","participant_id":"p2"}"#).unwrap();
        assert_eq!(pin.without(ParticipantId(2)).kind, Kind::Speaker);
        assert_eq!(pin.without(ParticipantId(3)), pin);
    }
}
