export { RoundRobinStrategy } from "./round-robin.ts";
