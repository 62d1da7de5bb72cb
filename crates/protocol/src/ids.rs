//! Opaque ids. On the wire they are strings with a one-letter kind prefix
//! (`u17`, `m4096`, `c3`); clients must treat them as opaque. Inside, they are
//! integers so that the store can index them cheaply.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An id string that does not name anything this server could have issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId;

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a valid id")
    }
}

impl std::error::Error for InvalidId {}

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl $name {
            /// The integer behind the id, as the store keeps it.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                let digits = s.strip_prefix($prefix).ok_or(InvalidId)?;
                // Only canonical forms: no sign, no leading zeros, no spaces.
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || (digits.len() > 1 && digits.starts_with('0'))
                {
                    return Err(InvalidId);
                }
                digits.parse::<i64>().map($name).map_err(|_| InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        /// On the wire, a string.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .description(Some("An opaque id: compare it, never parse it."))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

opaque_id!(
    /// A user account.
    UserId,
    "u"
);
opaque_id!(
    /// A stored message.
    MessageId,
    "m"
);
opaque_id!(
    /// A login session: one device. Not a counter, like the others.
    SessionId,
    "s"
);

opaque_id!(
    /// One WebSocket connection, unique within a server process.
    ConnectionId,
    "c"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_wire_form() {
        let id = UserId(17);
        assert_eq!(id.to_string(), "u17");
        assert_eq!("u17".parse::<UserId>(), Ok(id));
        assert_eq!(serde_json::to_string(&MessageId(5)).ok().as_deref(), Some("\"m5\""));
    }

    #[test]
    fn non_canonical_or_foreign_ids_are_refused() {
        for bad in [
            "",
            "u",
            "17",
            "m17",
            "u-1",
            "u+1",
            "u017",
            "u1 ",
            "u99999999999999999999",
        ] {
            assert_eq!(bad.parse::<UserId>(), Err(InvalidId), "{bad:?}");
        }
        assert_eq!("u0".parse::<UserId>(), Ok(UserId(0)));
    }
}
