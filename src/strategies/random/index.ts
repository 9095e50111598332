export { RandomStrategy } from "./random.ts";
