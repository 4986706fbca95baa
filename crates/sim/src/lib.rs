//! Scenario replay (work in progress).
