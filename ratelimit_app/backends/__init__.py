"""Redis connections and script execution for the limiter."""
