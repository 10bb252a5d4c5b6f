//! `ProcessMessage`: the upper-case echo kept from the original lab contract.

/// The prefix every processed text carries; clients of the lab contract rely on it.
pub const PROCESSED_PREFIX: &str = "Processed by server: ";

/// Returns `"Processed by server: "` followed by `text` upper-cased with Unicode rules.
pub fn processed_text(text: &str) -> String {
    let mut out = String::with_capacity(PROCESSED_PREFIX.len() + text.len());
    out.push_str(PROCESSED_PREFIX);
    out.push_str(&text.to_uppercase());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_upper_cased_with_prefix() {
        assert_eq!(processed_text("hello"), "Processed by server: HELLO");
    }

    #[test]
    fn unicode_is_upper_cased() {
        assert_eq!(processed_text("привет"), "Processed by server: ПРИВЕТ");
        // German sharp s grows to two letters under Unicode upper-casing.
        assert_eq!(processed_text("straße"), "Processed by server: STRASSE");
    }

    #[test]
    fn empty_text_gives_bare_prefix() {
        assert_eq!(processed_text(""), PROCESSED_PREFIX);
    }
}
