/** Types of synth.js (plain JavaScript so that it runs unchanged inside the model images). */
export interface Movie {
  id: string;
  title: string;
  /** unit-length genre vector */
  genres: number[];
  popularity: number;
  minutes: number;
}
export interface User {
  id: string;
  /** unit-length hidden taste vector over GENRES */
  taste: number[];
}
export interface Rating {
  user: string;
  movie: string;
  rating: number;
}
export interface DatasetOptions {
  seed: number;
  users: number;
  movies: number;
  ratingsPerUser: number;
}
export interface Dataset {
  options: DatasetOptions;
  genres: string[];
  movies: Movie[];
  users: User[];
  ratings: Rating[];
}
export declare const GENRES: string[];
export declare const DEFAULTS: Readonly<DatasetOptions>;
export declare function prng(seed: number): () => number;
export declare function match(user: Pick<User, "taste">, movie: Pick<Movie, "genres">): number;
export declare function generate(options?: Partial<DatasetOptions>): Dataset;
export declare function watch(
  user: Pick<User, "taste">,
  recommended: Pick<Movie, "id" | "genres" | "minutes">[],
  rand: () => number,
): { movie: string; minutes: number } | null;
