//! The GStreamer pipeline descriptions from pipelines/, compiled into the binary, and the filling of
//! their `{placeholder}`s. A newcomer tunes the encoder by editing a text file, not Rust.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use gst::prelude::*;
use gstreamer as gst;

/// A pipeline description: the file it came from (for error messages) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub file: &'static str,
    text: &'static str,
}

macro_rules! template {
    ($file:literal) => {
        Template {
            file: $file,
            text: include_str!(concat!("../../../../pipelines/", $file)),
        }
    };
}

pub const ROOM: Template = template!("room.txt");
pub const ENCODER_VP8: Template = template!("encoder-vp8.txt");
pub const ENCODER_H264: Template = template!("encoder-h264.txt");
pub const VIDEO_INPUT_VP8: Template = template!("video-input-vp8.txt");
pub const VIDEO_INPUT_H264: Template = template!("video-input-h264.txt");
pub const AUDIO_INPUT: Template = template!("audio-input.txt");
pub const LISTENER_AUDIO: Template = template!("listener-audio.txt");
pub const PLACEHOLDER: Template = template!("placeholder.txt");
pub const OUTLINE: Template = template!("outline.txt");
pub const RECORDER_VP8: Template = template!("recorder-vp8.txt");
pub const RECORDER_H264: Template = template!("recorder-h264.txt");
pub const TIER: Template = template!("tier.txt");

pub const ALL: [Template; 12] = [
    ROOM,
    ENCODER_VP8,
    ENCODER_H264,
    VIDEO_INPUT_VP8,
    VIDEO_INPUT_H264,
    AUDIO_INPUT,
    LISTENER_AUDIO,
    PLACEHOLDER,
    OUTLINE,
    RECORDER_VP8,
    RECORDER_H264,
    TIER,
];

impl Template {
    /// The description without comment lines, on one line.
    fn body(&self) -> String {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The names of the `{placeholders}` the description uses.
    pub fn placeholders(&self) -> BTreeSet<String> {
        let body = self.body();
        let mut names = BTreeSet::new();
        let mut rest = body.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    names.insert(after[..close].to_string());
                    rest = &after[close + 1..];
                }
                None => break,
            }
        }
        names
    }

    /// Fills every placeholder. Every placeholder must get a value and every value must be used,
    /// so a renamed placeholder fails loudly instead of reaching GStreamer as literal text.
    pub fn fill(&self, values: &[(&str, String)]) -> Result<String> {
        let wanted = self.placeholders();
        let given: BTreeSet<String> = values.iter().map(|(k, _)| k.to_string()).collect();
        if wanted != given {
            bail!(
                "pipelines/{}: placeholders {:?} but values for {:?}",
                self.file,
                wanted,
                given
            );
        }
        let mut out = self.body();
        for (key, value) in values {
            out = out.replace(&format!("{{{key}}}"), value);
        }
        Ok(out)
    }

    /// Fills the description and parses it into a bin. An unlinked src pad, if there is one,
    /// becomes the bin's `src` ghost pad. Unlinked sink pads are left alone on purpose: a ghosted
    /// textoverlay `text_sink` would look linked, and textoverlay would wait for text forever.
    pub fn bin(&self, values: &[(&str, String)], name: &str) -> Result<gst::Bin> {
        let description = self.fill(values)?;
        let bin = gst::parse::bin_from_description(&description, false)
            .with_context(|| format!("parsing pipelines/{} for {name}", self.file))?;
        bin.set_property("name", name);
        let unlinked: Vec<gst::Pad> = bin
            .iterate_elements()
            .into_iter()
            .flatten()
            .flat_map(|e| e.src_pads())
            .filter(|p| !p.is_linked())
            .collect();
        match unlinked.as_slice() {
            [] => {}
            [pad] => {
                let ghost = gst::GhostPad::builder_with_target(pad)
                    .with_context(|| format!("ghosting the src pad of {name}"))?
                    .name("src")
                    .build();
                bin.add_pad(&ghost)
                    .with_context(|| format!("adding the src pad to {name}"))?;
            }
            _ => anyhow::bail!("pipelines/{} has more than one unlinked src pad", self.file),
        }
        Ok(bin)
    }
}

/// The GStreamer element names a pipeline description uses (what `mcu doctor` checks for).
/// Properties (`name=value`), caps (`video/x-raw,…`), references (`mux.`), links (`!`) and
/// `{placeholders}` are skipped; quoted values may contain spaces.
pub fn element_names(description: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for token in tokens(description) {
        let head = token.split(',').next().unwrap_or_default();
        let is_element = !token.starts_with('{')
            && !token.contains('=')
            && !head.contains('/')
            && !token.contains('.')
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if is_element {
            names.insert(token);
        }
    }
    names
}

/// Splits a description into words at whitespace and `!`, keeping quoted text inside its word.
fn tokens(description: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for line in description.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        for c in line.chars().chain(std::iter::once('\n')) {
            match c {
                '"' => {
                    quoted = !quoted;
                    word.push(c);
                }
                c if !quoted && (c.is_whitespace() || c == '!') => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

impl Template {
    /// The GStreamer elements this description uses.
    pub fn elements(&self) -> BTreeSet<String> {
        element_names(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_names_skip_properties_caps_references_and_placeholders() {
        let description = "# a comment naming notanelement\n\
            appsrc name=src caps=\"application/x-rtp, media=video\" ! rtpjitterbuffer latency={ms}\n\
              ! video/x-raw,width=1 ! textoverlay font-desc=\"Sans Bold 28\" ! {encoder}\n\
              ! webmmux name=mux ! filesink\n\
            audiotestsrc!opusenc ! mux. compositor sink_0::zorder=0 ! fakesink";
        let names: Vec<String> = element_names(description).into_iter().collect();
        assert_eq!(
            names,
            [
                "appsrc",
                "audiotestsrc",
                "compositor",
                "fakesink",
                "filesink",
                "opusenc",
                "rtpjitterbuffer",
                "textoverlay",
                "webmmux"
            ]
        );
    }

    #[test]
    fn every_capsfilter_keeps_accepting_its_previous_caps_while_it_is_resized() {
        // See room.txt: a filter resized in a probe as a renegotiation comes refuses the frame
        // on its way unless it is delayed (tests/pipelines.rs shows it).
        for t in ALL {
            for element in t.body().split('!').filter(|e| e.contains("capsfilter")) {
                assert!(
                    element.contains("caps-change-mode=delayed"),
                    "pipelines/{}: a capsfilter resized at run time must say caps-change-mode=delayed: {element}",
                    t.file
                );
            }
        }
    }

    #[test]
    fn every_raw_video_caps_pins_one_colorimetry() {
        // The composite's caps must not change while a room lives (a recording's muxer refuses
        // the change), and a tile whose colorimetry differs from the composite's costs the
        // compositor a conversion: every raw video caps says the same.
        for t in ALL {
            for caps in t
                .body()
                .split_whitespace()
                .filter(|w| w.contains("video/x-raw"))
            {
                assert!(
                    caps.contains("colorimetry=bt601") && caps.contains("chroma-site=jpeg"),
                    "pipelines/{}: {caps} leaves the colorimetry open",
                    t.file
                );
            }
        }
    }

    #[test]
    fn every_template_uses_some_elements() {
        for t in ALL {
            assert!(
                !t.elements().is_empty(),
                "pipelines/{} names no element",
                t.file
            );
        }
    }

    #[test]
    fn placeholders_are_found_and_comments_ignored() {
        let t = Template {
            file: "t.txt",
            text: "# a {comment}\nvideotestsrc num-buffers={n}\n  ! fakesink name={name}\n",
        };
        let names: Vec<_> = t.placeholders().into_iter().collect();
        assert_eq!(names, vec!["n".to_string(), "name".to_string()]);
        assert_eq!(
            t.fill(&[("n", "3".into()), ("name", "out".into())])
                .unwrap(),
            "videotestsrc num-buffers=3 ! fakesink name=out"
        );
    }

    #[test]
    fn a_missing_or_extra_value_is_an_error() {
        let t = Template {
            file: "t.txt",
            text: "videotestsrc num-buffers={n} ! fakesink",
        };
        assert!(t.fill(&[]).is_err());
        assert!(t
            .fill(&[("n", "1".into()), ("unused", "x".into())])
            .is_err());
    }
}
