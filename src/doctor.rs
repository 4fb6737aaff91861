//! `mcu doctor`: is every GStreamer element the server and the probe build present on this
//! machine? The list is read from the pipeline descriptions themselves (pipelines/ and the
//! probe's), so it cannot drift from what actually runs. A missing element is reported with the
//! Debian package that provides it, because on Debian the answer is rarely the obvious one
//! (textoverlay lives in gstreamer1.0-x, not in plugins-base).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use gst::prelude::*;
use gstreamer as gst;

use mcu_server::media::pipelines;

/// Where each element the pipelines use comes from on Debian 12: (element, plugin, package).
/// A unit test fails when a pipeline gains an element that is not listed here.
const PROVIDERS: &[(&str, &str, &str)] = &[
    ("appsink", "app", "gstreamer1.0-plugins-base"),
    ("appsrc", "app", "gstreamer1.0-plugins-base"),
    ("audioconvert", "audioconvert", "gstreamer1.0-plugins-base"),
    (
        "audioresample",
        "audioresample",
        "gstreamer1.0-plugins-base",
    ),
    ("audiotestsrc", "audiotestsrc", "gstreamer1.0-plugins-base"),
    ("avdec_h264", "libav", "gstreamer1.0-libav"),
    ("capsfilter", "coreelements", "libgstreamer1.0-0"),
    ("compositor", "compositor", "gstreamer1.0-plugins-base"),
    ("filesink", "coreelements", "libgstreamer1.0-0"),
    ("imagefreeze", "imagefreeze", "gstreamer1.0-plugins-good"),
    ("matroskamux", "matroska", "gstreamer1.0-plugins-good"),
    ("opusdec", "opus", "gstreamer1.0-plugins-base"),
    ("opusenc", "opus", "gstreamer1.0-plugins-base"),
    ("queue", "coreelements", "libgstreamer1.0-0"),
    ("rtph264depay", "rtp", "gstreamer1.0-plugins-good"),
    ("rtph264pay", "rtp", "gstreamer1.0-plugins-good"),
    ("rtpjitterbuffer", "rtpmanager", "gstreamer1.0-plugins-good"),
    ("rtpopusdepay", "rtp", "gstreamer1.0-plugins-good"),
    ("rtpopuspay", "rtp", "gstreamer1.0-plugins-good"),
    ("rtpvp8depay", "rtp", "gstreamer1.0-plugins-good"),
    ("rtpvp8pay", "rtp", "gstreamer1.0-plugins-good"),
    ("tee", "coreelements", "libgstreamer1.0-0"),
    ("textoverlay", "pango", "gstreamer1.0-x"),
    (
        "videoconvert",
        "videoconvertscale",
        "gstreamer1.0-plugins-base",
    ),
    ("videocrop", "videocrop", "gstreamer1.0-plugins-good"),
    (
        "videoscale",
        "videoconvertscale",
        "gstreamer1.0-plugins-base",
    ),
    ("valve", "coreelements", "libgstreamer1.0-0"),
    ("videotestsrc", "videotestsrc", "gstreamer1.0-plugins-base"),
    ("vp8dec", "vpx", "gstreamer1.0-plugins-good"),
    ("vp8enc", "vpx", "gstreamer1.0-plugins-good"),
    ("webmmux", "matroska", "gstreamer1.0-plugins-good"),
    ("x264enc", "x264", "gstreamer1.0-plugins-ugly"),
];

/// The Debian package that provides `element`, if the table knows it.
pub fn package_of(element: &str) -> Option<&'static str> {
    PROVIDERS
        .iter()
        .find(|(name, _, _)| *name == element)
        .map(|(_, _, package)| *package)
}

/// Every element any pipeline uses, with the descriptions that use it.
pub fn required_elements() -> BTreeMap<String, BTreeSet<String>> {
    let mut sources: Vec<(String, BTreeSet<String>)> = pipelines::ALL
        .iter()
        .map(|t| (format!("pipelines/{}", t.file), t.elements()))
        .collect();
    sources.extend(
        mcu_probe::probe::pipeline_descriptions()
            .into_iter()
            .map(|(name, description)| (name, pipelines::element_names(&description))),
    );
    let mut required: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (source, elements) in sources {
        for element in elements {
            required.entry(element).or_default().insert(source.clone());
        }
    }
    required
}

/// What the doctor found.
#[derive(Debug)]
pub struct Report {
    /// Element, the plugin it came from, and that plugin's version.
    pub present: Vec<(String, String, String)>,
    /// Element, the descriptions that need it, and its Debian package.
    pub missing: Vec<(String, BTreeSet<String>, Option<&'static str>)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// The Debian packages that would supply every missing element.
    pub fn packages_to_install(&self) -> BTreeSet<&'static str> {
        self.missing.iter().filter_map(|(_, _, p)| *p).collect()
    }
}

/// Looks up every required element in the GStreamer registry (`gst::init` must have run), and
/// creates one of each: a plugin whose shared library cannot load fails here, not in a call.
pub fn examine() -> Report {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (element, users) in required_elements() {
        let factory = gst::ElementFactory::find(&element);
        let made = factory
            .as_ref()
            .is_some_and(|f| gst::ElementFactory::create(f).build().is_ok());
        match factory {
            Some(factory) if made => {
                let (plugin, version) = factory
                    .plugin()
                    .map(|p| (p.plugin_name().to_string(), p.version().to_string()))
                    .unwrap_or_else(|| ("?".into(), "?".into()));
                present.push((element, plugin, version));
            }
            _ => {
                let package = package_of(&element);
                missing.push((element, users, package));
            }
        }
    }
    Report { present, missing }
}

/// The report as `mcu doctor` prints it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mcu {} on {} (built against GStreamer 1.22 or later)",
        env!("CARGO_PKG_VERSION"),
        gst::version_string()
    );
    let mut plugins: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (element, plugin, version) in &report.present {
        plugins
            .entry((plugin.as_str(), version.as_str()))
            .or_default()
            .push(element.as_str());
    }
    let _ = writeln!(
        out,
        "{} of {} GStreamer elements present:",
        report.present.len(),
        report.present.len() + report.missing.len()
    );
    for ((plugin, version), elements) in &plugins {
        let package = elements.first().and_then(|e| package_of(e)).unwrap_or("?");
        let _ = writeln!(
            out,
            "  ok       {plugin} {version} ({package}): {}",
            elements.join(", ")
        );
    }
    for (element, users, package) in &report.missing {
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "  MISSING  {element}, needed by {}: install {}",
            users.join(", "),
            package.unwrap_or("the package that provides it (not in mcu's table)")
        );
    }
    if report.ok() {
        let _ = writeln!(out, "everything the server and the probe need is here");
    } else {
        let packages: Vec<&str> = report.packages_to_install().into_iter().collect();
        let _ = writeln!(
            out,
            "{} element(s) missing; on Debian/Ubuntu: apt-get install --no-install-recommends {}",
            report.missing.len(),
            packages.join(" ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_a_pipeline_uses_has_a_known_package() {
        let required = required_elements();
        assert!(required.contains_key("compositor") && required.contains_key("x264enc"));
        for (element, users) in &required {
            assert!(
                package_of(element).is_some(),
                "{element} (used by {users:?}) needs an entry in doctor::PROVIDERS"
            );
        }
    }

    #[test]
    fn the_table_lists_nothing_no_pipeline_uses() {
        let required = required_elements();
        for (element, _, _) in PROVIDERS {
            assert!(
                required.contains_key(*element),
                "{element} is in doctor::PROVIDERS but no pipeline uses it"
            );
        }
    }

    #[test]
    fn a_missing_element_is_reported_with_its_package() {
        let report = Report {
            present: vec![("tee".into(), "coreelements".into(), "1.22.0".into())],
            missing: vec![(
                "textoverlay".into(),
                BTreeSet::from(["pipelines/placeholder.txt".to_string()]),
                package_of("textoverlay"),
            )],
        };
        let text = render(&report);
        assert!(!report.ok());
        assert!(text.contains("MISSING  textoverlay, needed by pipelines/placeholder.txt"));
        assert!(text.contains("apt-get install --no-install-recommends gstreamer1.0-x"));
    }
}
