//! Ids as text (`7-0-42`, `3-1-42-7`): numbers joined by dashes. Every delivery and every
//! published message gets such an id, and every ack sends one back, so they are written
//! and read here without `core::fmt` and `str::parse`, which cost several times more
//! per id than the rest of a publish.

/// Longest decimal text of a `u64` (18 446 744 073 709 551 615).
const U64_DIGITS_MAX: usize = 20;

/// Most numbers in one id.
const PARTS_MAX: usize = 4;

/// `parts` (at most four) in decimal, joined by `-`, in a `String` of the exact length.
/// The text is written backwards into a buffer on the stack (so no digit is moved twice),
/// then copied once.
pub fn dashed(parts: &[u64]) -> String {
    assert!(parts.len() <= PARTS_MAX, "an id has at most {PARTS_MAX} parts");
    let mut buffer = [0u8; PARTS_MAX * (U64_DIGITS_MAX + 1)];
    let mut at = buffer.len();
    for (i, &n) in parts.iter().rev().enumerate() {
        if i > 0 {
            at -= 1;
            buffer[at] = b'-';
        }
        at = write_u64_before(&mut buffer, at, n);
    }
    String::from(std::str::from_utf8(&buffer[at..]).expect("only ASCII digits and dashes were written"))
}

/// `{prefix}-{n}`: the client's idempotency keys, one per published message.
pub fn dashed_after(prefix: &str, n: u64) -> String {
    let mut digits = [0u8; U64_DIGITS_MAX];
    let at = write_u64_before(&mut digits, U64_DIGITS_MAX, n);
    let digits = std::str::from_utf8(&digits[at..]).expect("only ASCII digits were written");
    let mut text = String::with_capacity(prefix.len() + 1 + digits.len());
    text.push_str(prefix);
    text.push('-');
    text.push_str(digits);
    text
}

/// Writes `n` in decimal so that it ends just before `end` in `out`; returns where it starts.
fn write_u64_before(out: &mut [u8], end: usize, mut n: u64) -> usize {
    let mut at = end;
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// Reads exactly `N` dash-separated decimal numbers, as `str::parse::<u64>` would read each
/// (ASCII digits only, no sign, not empty, no overflow). `None` when the text is not that.
/// One pass over the bytes: every ack sends an id back to be read here.
pub fn undashed<const N: usize>(text: &str) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut slot = 0;
    let mut digits = 0;
    for &b in text.as_bytes() {
        if b == b'-' {
            if digits == 0 {
                return None;
            }
            slot += 1;
            digits = 0;
            continue;
        }
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        let n = out.get_mut(slot)?;
        *n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
        digits += 1;
    }
    (N > 0 && digits > 0 && slot == N - 1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_matches_format_and_undashed_reads_it_back() {
        for parts in [[0, 0, 0], [7, 0, 42], [u64::MAX, 1, 10], [1234567890, 99, 100000]] {
            let text = dashed(&parts);
            assert_eq!(text, format!("{}-{}-{}", parts[0], parts[1], parts[2]));
            assert_eq!(undashed::<3>(&text), Some(parts));
        }
        assert_eq!(dashed_after("host-1a-7-0", 1234), "host-1a-7-0-1234");
    }

    #[test]
    fn every_digit_count_is_written_whole_and_exactly_sized() {
        let mut n = 1u64;
        for _ in 0..20 {
            for m in [n - 1, n, n.saturating_mul(10) - 1] {
                let text = dashed(&[m, m]);
                assert_eq!(text, format!("{m}-{m}"));
                assert_eq!(text.capacity(), text.len(), "one allocation of the exact length");
                assert_eq!(dashed_after("p", m), format!("p-{m}"));
            }
            n = n.saturating_mul(10);
        }
        assert_eq!(dashed(&[]), "");
    }

    #[test]
    fn undashed_refuses_what_parse_refuses() {
        for bad in [
            "",
            "1-2",
            "1-2-3-4",
            "a-b-c",
            "1--3",
            "-1-2",
            "1-2-+3",
            "1-2-18446744073709551616",
            "1-2-3 ",
            "1-2-3-",
            "-",
        ] {
            assert_eq!(undashed::<3>(bad), None, "{bad:?}");
        }
        assert_eq!(undashed::<1>("007"), Some([7]), "leading zeros, as parse reads them");
        assert_eq!(undashed::<0>(""), None);
    }

    /// Every text made of digits and dashes (up to 5 characters, with long digit runs too)
    /// reads the same as splitting at the dashes and parsing each part.
    #[test]
    fn undashed_agrees_with_split_and_parse() {
        fn reference<const N: usize>(text: &str) -> Option<[u64; N]> {
            let parts: Vec<&str> = text.split('-').collect();
            if parts.len() != N {
                return None;
            }
            let mut out = [0u64; N];
            for (slot, part) in out.iter_mut().zip(parts) {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                *slot = part.parse().ok()?;
            }
            Some(out)
        }
        let alphabet = ['0', '7', '-', 'x'];
        let mut texts = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> =
                texts.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
            texts.extend(longer);
        }
        texts.sort();
        texts.dedup();
        texts.extend(["18446744073709551615-1".to_string(), "18446744073709551616-1".to_string()]);
        for text in &texts {
            assert_eq!(undashed::<1>(text), reference::<1>(text), "{text:?}");
            assert_eq!(undashed::<2>(text), reference::<2>(text), "{text:?}");
            assert_eq!(undashed::<3>(text), reference::<3>(text), "{text:?}");
        }
    }
}
