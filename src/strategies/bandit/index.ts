export { BanditStrategy, DEFAULT_BURN_IN_UNITS, DEFAULT_DRAWS, DEFAULT_FLOOR, DEFAULT_MAX_SEEN_UNITS } from "./bandit.ts";
export { beta, gamma, normal } from "./beta.ts";
