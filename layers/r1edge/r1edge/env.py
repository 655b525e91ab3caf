"""Environment-variable names read by r1edge, one constant each (Powertools' habit: names in one
module, an explicit argument always beats the environment)."""
