//! Test harness library (filled in below).
