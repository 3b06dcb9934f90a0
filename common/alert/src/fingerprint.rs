//! The stable id of an alert: its rule plus its identifying labels.

use crate::Labels;

/// A stable fingerprint: FNV-1a 64 over the rule name and the sorted labels, in
/// hex. Stable across processes and Rust versions (unlike `DefaultHasher`), which
/// the alerter and the store rely on to recognise an alert after a restart.
pub fn fingerprint(rule: &str, labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    };
    eat(rule.as_bytes());
    for (k, v) in labels {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        let l = labels(&[("cluster", "c"), ("member", "m1")]);
        assert_eq!(fingerprint("r", &l), fingerprint("r", &l.clone()));
        assert_ne!(fingerprint("r", &l), fingerprint("s", &l));
        assert_ne!(
            fingerprint("r", &l),
            fingerprint("r", &labels(&[("cluster", "c"), ("member", "m2")]))
        );
        assert_ne!(
            fingerprint("r", &labels(&[("ab", "c")])),
            fingerprint("r", &labels(&[("a", "bc")]))
        );
        // A known value, so an accidental change of the hash (which would orphan
        // every alert across an upgrade) is caught.
        assert_eq!(fingerprint("r", &labels(&[("k", "v")])), "71b47e396f9de8b7");
    }
}
