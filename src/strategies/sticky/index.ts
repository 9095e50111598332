export { StickyStrategy } from "./sticky.ts";
export { RangeTable } from "./range-table.ts";
