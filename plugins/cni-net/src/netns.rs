//! Network namespace entry.
