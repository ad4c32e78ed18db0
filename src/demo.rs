//! `pgberth demo`: a throwaway PostgreSQL with pgberth in front of it.
