//! Client and server authentication exchanges (SCRAM-SHA-256, md5).
