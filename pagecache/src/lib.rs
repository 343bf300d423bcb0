//! The pmemfs page cache (placeholder until the XArray lands).
