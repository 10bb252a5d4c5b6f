//! `MostFrequentLetter`: the most frequent Unicode letter, case-insensitively.

use std::collections::HashMap;

/// The default cap on input size: 1 MiB.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrequentLetterError {
    #[error("text contains no letters")]
    NoLetters,
    #[error("text is {len} bytes, over the limit of {max} bytes (max_text_bytes)")]
    TooLong { len: usize, max: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterCount {
    /// The lower-cased letter; lower-casing may give more than one char (e.g. 'İ').
    pub letter: String,
    pub count: u64,
}

/// Letters are chars with the Unicode `Alphabetic` property, compared by their lower-case
/// form; digits, spaces and punctuation are ignored. Ties go to the letter seen first.
pub fn most_frequent_letter(
    text: &str,
    max_bytes: usize,
) -> Result<LetterCount, FrequentLetterError> {
    if text.len() > max_bytes {
        return Err(FrequentLetterError::TooLong {
            len: text.len(),
            max: max_bytes,
        });
    }
    // (count, first position) per letter; the position settles ties deterministically.
    let mut seen: HashMap<String, (u64, usize)> = HashMap::new();
    let mut lowered = String::new();
    for (position, ch) in text.chars().filter(|c| c.is_alphabetic()).enumerate() {
        lowered.clear();
        lowered.extend(ch.to_lowercase());
        match seen.get_mut(lowered.as_str()) {
            Some((count, _)) => *count += 1,
            None => {
                seen.insert(lowered.clone(), (1, position));
            }
        }
    }
    seen.into_iter()
        .max_by(|(_, (count_a, first_a)), (_, (count_b, first_b))| {
            count_a.cmp(count_b).then(first_b.cmp(first_a))
        })
        .map(|(letter, (count, _))| LetterCount { letter, count })
        .ok_or(FrequentLetterError::NoLetters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<(String, u64), FrequentLetterError> {
        most_frequent_letter(text, DEFAULT_MAX_TEXT_BYTES).map(|r| (r.letter, r.count))
    }

    #[test]
    fn abracadabra() {
        assert_eq!(run("abracadabra"), Ok(("a".into(), 5)));
    }

    #[test]
    fn cyrillic_tie_goes_to_first_seen() {
        // п р и в е т м и р: 'р' and 'и' both appear twice; 'р' comes first.
        assert_eq!(run("Привет, мир"), Ok(("р".into(), 2)));
    }

    #[test]
    fn case_insensitive_and_lower_cased() {
        assert_eq!(run("AaAbB"), Ok(("a".into(), 3)));
        assert_eq!(run("ZZz"), Ok(("z".into(), 3)));
    }

    #[test]
    fn tie_goes_to_first_letter_in_text() {
        assert_eq!(run("ba"), Ok(("b".into(), 1)));
        assert_eq!(run("abab"), Ok(("a".into(), 2)));
        assert_eq!(run("bbaa"), Ok(("b".into(), 2)));
    }

    #[test]
    fn digits_spaces_punctuation_ignored() {
        assert_eq!(run("1111 !!! x ,,,"), Ok(("x".into(), 1)));
    }

    #[test]
    fn no_letters_is_an_error() {
        assert_eq!(run(""), Err(FrequentLetterError::NoLetters));
        assert_eq!(run("123 !?"), Err(FrequentLetterError::NoLetters));
        assert_eq!(
            FrequentLetterError::NoLetters.to_string(),
            "text contains no letters"
        );
    }

    #[test]
    fn over_limit_names_the_limit() {
        let err = most_frequent_letter("abcdef", 5).unwrap_err();
        assert_eq!(err, FrequentLetterError::TooLong { len: 6, max: 5 });
        assert!(err.to_string().contains("max_text_bytes"));
        assert!(most_frequent_letter("abcde", 5).is_ok());
    }

    #[test]
    fn non_latin_scripts_count_as_letters() {
        assert_eq!(run("日本日"), Ok(("日".into(), 2)));
        assert_eq!(run("ΣΣσ"), Ok(("σ".into(), 3)));
    }
}
