//! The video codecs the server speaks, as a plain value every layer can name. A leaf: it imports
//! nothing from the rest of the server.

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    Vp8,
    H264,
}

impl VideoCodec {
    pub fn mime_type(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "video/VP8",
            VideoCodec::H264 => "video/H264",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "vp8" => Some(VideoCodec::Vp8),
            "h264" => Some(VideoCodec::H264),
            _ => None,
        }
    }
}
