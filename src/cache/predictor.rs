//! The keys known to be too large for the cache (`cache.max_object`), which pingora's
//! predictor lets bypass it. Without that, each read of such a media was taken for a fill until
//! its answer's head said otherwise: pingora takes the client's `Range` off a request it means
//! to cache, so every seek of a player in a 100 MB video fetched the whole video from the media
//! host, and the client waited for everything before its range. Bypassed, a read goes upstream
//! with its `Range` and validators, and the media host answers just that.
//!
//! Only size is remembered. pingora's predictor would also remember other answers not kept (an
//! upstream's 503 among them), and a key it remembers skips the cache lock: during an outage,
//! concurrent reads of a media would each go upstream instead of one at a time.

use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::{CacheKey, NoCacheReason};

/// Keys remembered per shard (least recently marked forgotten first): 16,384 in all, some
/// 16 bytes each.
const PER_SHARD: usize = 1024;
const SHARDS: usize = 16;

pub struct TooLarge(Predictor<SHARDS>);

impl TooLarge {
    pub fn new() -> TooLarge {
        TooLarge(Predictor::new(PER_SHARD, None))
    }
}

impl CacheablePredictor for TooLarge {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        self.0.cacheable_prediction(key)
    }

    fn predicted_uncacheable_reason(&self, key: &CacheKey) -> Option<NoCacheReason> {
        self.0.predicted_uncacheable_reason(key)
    }

    /// A bypassed read whose answer turned out cacheable (`cache.max_object` raised by a
    /// reload): the key is read through the cache again.
    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        self.0.mark_cacheable(key)
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        match reason {
            NoCacheReason::ResponseTooLarge => self.0.mark_uncacheable(key, reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MediaSid, ServiceSid};
    use crate::cache::Kind;

    #[test]
    fn only_answers_too_large_are_remembered() {
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let key = |n: u8| {
            let media = MediaSid::parse(&format!("ME{n:032x}")).unwrap();
            crate::cache::key(&service, &media, Kind::Content)
        };
        let too_large = TooLarge::new();
        too_large.mark_uncacheable(&key(1), NoCacheReason::OriginNotCache);
        too_large.mark_uncacheable(&key(2), NoCacheReason::Custom("no room for the fill"));
        too_large.mark_uncacheable(&key(3), NoCacheReason::ResponseTooLarge);
        assert!(too_large.cacheable_prediction(&key(1)));
        assert!(too_large.cacheable_prediction(&key(2)));
        assert!(!too_large.cacheable_prediction(&key(3)));
        too_large.mark_cacheable(&key(3));
        assert!(too_large.cacheable_prediction(&key(3)));
    }
}
