"""The eval kind's commands, one module each: `runner eval`, `runner compare`, `runner report`."""
