//! Test harness for real components.
