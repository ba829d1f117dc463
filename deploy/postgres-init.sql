-- The cluster profile's stack keeps its own database next to the default one.
CREATE DATABASE ratelimit_cluster OWNER ratelimit;
