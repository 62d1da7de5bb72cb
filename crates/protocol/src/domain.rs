//! Validated values. Each type's `parse` is the only way to make one, so a
//! value of the type is known to be valid wherever it travels: from the
//! frame or request it came in, through the server, down to the store.

use crate::ErrorCode;

/// A username: 3–32 characters of `a-z 0-9 _ . -`, folded to lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Folds upper case to lower, then checks length and alphabet.
    pub fn parse(raw: &str) -> Result<Self, ErrorCode> {
        let folded = raw.to_ascii_lowercase();
        let ok_len = (3..=32).contains(&folded.len());
        let ok_chars = folded
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok_len && ok_chars {
            Ok(Username(folded))
        } else {
            Err(ErrorCode::InvalidUsername)
        }
    }

    /// The folded name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password: 8–128 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

impl Password {
    /// Checks the length in characters.
    pub fn parse(raw: &str) -> Result<Self, ErrorCode> {
        if (8..=128).contains(&raw.chars().count()) {
            Ok(Password(raw.to_owned()))
        } else {
            Err(ErrorCode::InvalidPassword)
        }
    }

    /// The password's bytes, for hashing.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A message text: at least one visible character, at most `max_chars`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    /// Refuses blank text (`empty_message`) and text over the limit
    /// (`message_too_long`); the text is kept exactly as sent.
    pub fn parse(raw: String, max_chars: usize) -> Result<Self, ErrorCode> {
        if raw.trim().is_empty() {
            return Err(ErrorCode::EmptyMessage);
        }
        // Cheap bound first: a string of n bytes has at most n characters.
        if raw.len() > max_chars && raw.chars().count() > max_chars {
            return Err(ErrorCode::MessageTooLong);
        }
        Ok(MessageBody(raw))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A client's idempotency key: 1–128 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Checks the length.
    pub fn parse(raw: String) -> Result<Self, ErrorCode> {
        if (1..=128).contains(&raw.len()) {
            Ok(ClientMsgId(raw))
        } else {
            Err(ErrorCode::InvalidPayload)
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// What to search for: 1–16 words of at most 64 characters each, from a
/// query of at most 256 characters. A word is a run of letters and digits
/// (any script); everything else separates words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchText(Vec<String>);

impl SearchText {
    /// Most characters in a query.
    pub const MAX_CHARS: usize = 256;
    /// Most words in a query.
    pub const MAX_WORDS: usize = 16;
    /// Most characters in a word.
    pub const MAX_WORD_CHARS: usize = 64;

    /// Splits a query into words; `None` if it has none, or is too long.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.chars().count() > Self::MAX_CHARS {
            return None;
        }
        let words: Vec<String> = raw
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        let fits = |w: &String| w.chars().count() <= Self::MAX_WORD_CHARS;
        (!words.is_empty() && words.len() <= Self::MAX_WORDS && words.iter().all(fits)).then_some(SearchText(words))
    }

    /// The words, as typed (each store folds case its own way).
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_split_into_words_of_any_script() {
        let words = |q: &str| SearchText::parse(q).map(|s| s.0);
        assert_eq!(words("Grüße, Ünal!"), Some(vec!["Grüße".into(), "Ünal".into()]));
        assert_eq!(words("ночь  и 42"), Some(vec!["ночь".into(), "и".into(), "42".into()]));
        assert_eq!(words(" \"*:() "), None, "no word at all");
        assert_eq!(words(&"a ".repeat(17)), None, "too many words");
        assert_eq!(words(&"x".repeat(65)), None, "a word too long");
        assert_eq!(words(&"x ".repeat(129)), None, "too long");
    }

    #[test]
    fn usernames_fold_and_check_their_alphabet() {
        assert_eq!(Username::parse("Alice_01").map(|u| u.0), Ok("alice_01".to_owned()));
        assert_eq!(Username::parse("a.b-c").map(|u| u.0), Ok("a.b-c".to_owned()));
        for bad in ["ab", "", "has space", "émile", "x".repeat(33).as_str(), "semi;colon"] {
            assert_eq!(Username::parse(bad), Err(ErrorCode::InvalidUsername), "{bad:?}");
        }
        assert!(Username::parse(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse(&"é".repeat(128)).is_ok());
        assert!(Password::parse(&"é".repeat(129)).is_err());
    }

    #[test]
    fn message_bodies_refuse_blank_and_long_text() {
        assert_eq!(MessageBody::parse(" \n\t".into(), 10), Err(ErrorCode::EmptyMessage));
        assert_eq!(MessageBody::parse(String::new(), 10), Err(ErrorCode::EmptyMessage));
        assert_eq!(MessageBody::parse("x".repeat(11), 10), Err(ErrorCode::MessageTooLong));
        assert!(MessageBody::parse("é".repeat(10), 10).is_ok());
        assert_eq!(
            MessageBody::parse(" hi ".into(), 10).map(MessageBody::into_inner),
            Ok(" hi ".to_owned())
        );
    }

    #[test]
    fn client_msg_ids_are_bounded() {
        assert!(ClientMsgId::parse("k".into()).is_ok());
        assert!(ClientMsgId::parse(String::new()).is_err());
        assert!(ClientMsgId::parse("k".repeat(129)).is_err());
    }
}
