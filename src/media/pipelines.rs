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
            text: include_str!(concat!("../../pipelines/", $file)),
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
pub const RECORDER_VP8: Template = template!("recorder-vp8.txt");
pub const RECORDER_H264: Template = template!("recorder-h264.txt");

pub const ALL: [Template; 10] = [
    ROOM,
    ENCODER_VP8,
    ENCODER_H264,
    VIDEO_INPUT_VP8,
    VIDEO_INPUT_H264,
    AUDIO_INPUT,
    LISTENER_AUDIO,
    PLACEHOLDER,
    RECORDER_VP8,
    RECORDER_H264,
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

#[cfg(test)]
mod tests {
    use super::*;

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
