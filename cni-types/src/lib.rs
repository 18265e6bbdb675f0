//! CNI spec types.
