"""One router per resource: auth (sign-in), subjects, reports, audit (the log), assets."""
