export { BanditStrategy, DEFAULT_BURN_IN_UNITS, DEFAULT_DRAWS, DEFAULT_FLOOR } from "./bandit.ts";
export { beta, gamma, normal } from "./beta.ts";
