//! The Media JSON and the MediaSet request and answer, field for field as the Media API sends
//! them (spec/media-api.md).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub sid: String,
    pub service_sid: String,
    pub account_sid: String,
    pub date_created: String,
    pub date_upload_updated: String,
    pub date_updated: String,
    pub channel_sid: Option<String>,
    pub message_sid: Option<String>,
    pub author: String,
    pub category: String,
    pub size: u64,
    pub content_type: String,
    pub filename: Option<String>,
    pub url: String,
    pub is_multipart_upstream: bool,
    pub links: Links,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    pub content: String,
    /// Left out of the create answer, present on GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_direct_temporary: Option<String>,
}

/// `POST …/MediaSet` body: `{"command":"get","list":[{"media_sid":"ME…"}]}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaSetRequest {
    pub command: String,
    pub list: Vec<MediaSetItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaSetItem {
    pub media_sid: String,
}

/// One element of the MediaSet answer array.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaSetRecord {
    pub media_record: Media,
}
